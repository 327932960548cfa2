"""Reward-level terms (`openrlhf_fair.core.reward_terms`): level fairness, reward centering, batch-sum regularisation.

Checked against float64 references written from the definitions (f_tau from Lan et al.'s formula, group means by
loops), with invariance (shift and scale) and gradient-direction tests, finite differences, and bit-identity to
the plain loss when a strength is 0.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_fair.errors import FairnessConfigError
from openrlhf_fair.settings import RewardFairnessConfig
from openrlhf_fair.core.fairness import log_fairness
from openrlhf_fair.core.reward_terms import batch_sum_term, extra_terms, level_allocations, level_log_fairness, level_spread, pair_levels, reward_centering_term


def reference_level_fairness(chosen, reject, tau, temperature, group_ids=None) -> float:
    """F_L from the definitions, in python floats: levels, standardised (population std), sigmoid, per-group means,
    Lan et al.'s f_tau / n."""
    levels = [(c + r) / 2 for c, r in zip(chosen, reject)]
    mean = sum(levels) / len(levels)
    std = math.sqrt(sum((l - mean) ** 2 for l in levels) / len(levels))
    y = [1 / (1 + math.exp(-(l - mean) / (temperature * std))) for l in levels]
    if group_ids is not None:
        groups = sorted(set(group_ids))
        y = [sum(v for v, g in zip(y, group_ids) if g == k) / group_ids.count(k) for k in groups]
    total = sum(y)
    p = [v / total for v in y]
    if tau == 0:
        f = math.exp(-sum(q * math.log(q) for q in p))
    else:
        f = math.copysign(1.0, 1 - tau) * sum(q ** (1 - tau) for q in p) ** (1 / tau)
    return f / len(y)


def rewards(n, seed, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=torch.float64) * scale,
            torch.randn(n, generator=g, dtype=torch.float64) * scale)


@pytest.mark.parametrize("tau", [-1.0, -3.0, 0.0, 0.5, 2.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("grouped", [False, True])
def test_level_fairness_matches_the_float64_reference(tau, temperature, grouped):
    chosen, reject = rewards(12, seed=int(10 * temperature) + (1 if grouped else 0))
    ids = [0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2, 0] if grouped else None
    log_f, n_items = level_log_fairness(pair_levels(chosen, reject), tau=tau, temperature=temperature,
                                        group_ids=None if ids is None else torch.tensor(ids))
    F = math.copysign(1.0, 1 - tau) * math.exp(float(log_f))
    assert n_items == (3 if grouped else 12)
    assert F == pytest.approx(reference_level_fairness(chosen.tolist(), reject.tolist(), tau, temperature, ids),
                              rel=1e-12)


def test_jain_case_is_jains_index_of_the_standardised_levels():
    chosen, reject = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, -3.0])
    levels = torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64)  # mean -1/3, population std sqrt(14) / 3
    y = torch.sigmoid((levels + 1 / 3) / (math.sqrt(14) / 3))
    log_f, _ = level_log_fairness(pair_levels(chosen, reject))
    assert math.exp(float(log_f)) == pytest.approx(float(y.sum() ** 2 / (3 * (y**2).sum())), rel=1e-14)
    assert torch.allclose(level_allocations(pair_levels(chosen, reject)), y, rtol=1e-15, atol=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=2, max_size=16), st.floats(-50, 50), st.integers(0, 2**31))
def test_level_fairness_ignores_a_common_shift_of_every_reward(levels, shift, seed):
    """The reason levels are centred: moving every reward by the same amount (free for a pairwise loss) cannot
    raise F_L, so the term cannot be satisfied by saturating the sigmoid."""
    chosen = torch.tensor(levels, dtype=torch.float64)
    reject = chosen - torch.rand(len(levels), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    base, _ = level_log_fairness(pair_levels(chosen, reject))
    shifted, _ = level_log_fairness(pair_levels(chosen + shift, reject + shift))
    assert float(shifted) == pytest.approx(float(base), abs=1e-9)


def level_gradients(chosen, reject, ids=None, tau=-1.0, level_reg=1.0):
    c, r = chosen.clone().requires_grad_(True), reject.clone().requires_grad_(True)
    config = RewardFairnessConfig(level_reg=level_reg, tau=tau, group_key="g" if ids is not None else None)
    total, _ = extra_terms(c, r, config, group_ids=ids)
    total.backward()
    return c.grad, r.grad


@pytest.mark.parametrize("tau", [-1.0, -2.0, 0.0, 0.5, 3.0])
def test_descent_pulls_the_group_levels_together(tau):
    """Group 0 sits low, group 1 high: a gradient step raises group 0's mean reward and lowers group 1's. (Single
    pairs need not follow their group: the term keeps the level spread, so the outermost pair of a group can be
    pushed outward while the group's mean moves in.)"""
    chosen = torch.tensor([-1.0, -0.5, -1.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    reject = chosen - torch.tensor([0.5, 1.0, 0.2, 0.7, 0.1, 1.2], dtype=torch.float64)
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    grad_c, grad_r = level_gradients(chosen, reject, ids, tau=tau)
    push = grad_c + grad_r  # loss gradient on each pair's level (x2): descent moves against it
    assert float(push[:3].sum()) < 0 and float(push[3:].sum()) > 0
    step = 0.1
    before = reference_level_fairness(chosen.tolist(), reject.tolist(), tau, 1.0, ids.tolist())
    after = reference_level_fairness((chosen - step * grad_c).tolist(), (reject - step * grad_r).tolist(), tau, 1.0,
                                     ids.tolist())
    assert after > before  # F_L (signed, as the term -LAMBDA * F_L maximises it) rose


def test_level_term_never_touches_a_margin_and_does_not_drift():
    chosen, reject = rewards(10, seed=3)
    grad_c, grad_r = level_gradients(chosen, reject)
    assert torch.equal(grad_c, grad_r)  # d/dc = d/dr for each pair: its margin gets no push
    assert float(grad_c.sum() + grad_r.sum()) == pytest.approx(0.0, abs=1e-15)  # pushes on the levels sum to 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=2, max_size=16), st.floats(1e-3, 1e3), st.floats(-5, 5),
       st.booleans(), st.sampled_from([-1.0, -3.0, 0.0, 0.5, 2.0]), st.integers(0, 2**31))
def test_level_fairness_ignores_a_common_scale_of_every_reward(levels, scale, shift, grouped, tau, seed):
    """Multiplying every reward by c > 0 (and shifting them) leaves F_L unchanged: the model cannot raise it by
    shrinking its reward scale (issue 21)."""
    chosen = torch.tensor(levels, dtype=torch.float64)
    reject = chosen - torch.rand(len(levels), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if float(pair_levels(chosen, reject).std(correction=0)) < 1e-6:
        return  # all levels (nearly) equal: F_L is 1 at every scale, nothing to compare
    ids = torch.arange(len(levels)) % 2 if grouped else None
    base, _ = level_log_fairness(pair_levels(chosen, reject), tau=tau, group_ids=ids)
    scaled, _ = level_log_fairness(pair_levels(scale * chosen + shift, scale * reject + shift), tau=tau, group_ids=ids)
    assert float(scaled) == pytest.approx(float(base), rel=1e-9, abs=1e-12)


def fixed_temperature_term(chosen, reject, ids, temperature):
    """The retired fixed-temperature form, -F_L with y = sigmoid((l - mean l) / T): the contrast for the tests."""
    levels = pair_levels(chosen, reject)
    y = torch.sigmoid((levels - levels.mean()) / temperature)
    groups, inverse = torch.unique(ids, return_inverse=True)
    means = torch.zeros(groups.numel(), dtype=y.dtype).index_add(0, inverse, y) / torch.bincount(inverse)
    return -log_fairness(means, -1.0).exp()


def two_groups(seed=0, n=16):
    """Group 0's levels low, group 1's high, margins of either sign."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(n) % 2
    levels = torch.randn(n, generator=g, dtype=torch.float64) + 1.5 * ids
    margins = torch.randn(n, generator=g, dtype=torch.float64)
    return levels + margins / 2, levels - margins / 2, ids


@pytest.mark.parametrize("seed", range(5))
def test_the_gradient_has_no_component_along_the_reward_scale(seed):
    """Euler: F_L is homogeneous of degree 0 in the rewards, so sum_i (c_i dL/dc_i + r_i dL/dr_i) = 0 (and the
    shift direction too): no descent step changes the scale to first order. The fixed-temperature form, and the
    same form with the spread detached (T * s held constant), have a component there: descent shrinks every reward."""
    chosen, reject, ids = two_groups(seed)
    c, r = chosen.clone().requires_grad_(True), reject.clone().requires_grad_(True)
    grad_c, grad_r = level_gradients(chosen, reject, ids)
    along_scale = float((chosen * grad_c + reject * grad_r).sum())
    size = float(torch.cat([chosen * grad_c, reject * grad_r]).abs().sum())
    assert abs(along_scale) < 1e-12 * size and size > 1e-3
    assert float((grad_c + grad_r).sum()) == pytest.approx(0.0, abs=1e-14)
    detached_spread = float(level_spread(pair_levels(chosen, reject)))
    for temperature in (1.0, detached_spread):
        c.grad = r.grad = None
        fixed_temperature_term(c, r, ids, temperature).backward()
        assert float((chosen * c.grad + reject * r.grad).sum()) > 1e-4  # the loss falls along -rewards (shrinking)


def test_descent_closes_the_gap_relative_to_the_spread_without_shrinking_it():
    """A small descent step on the level term alone lowers the groups' level gap / level std while the level std
    stays put to first order; the fixed-temperature form's step shrinks the std instead (at T = 1 most of its
    gap reduction is the scale's)."""
    chosen, reject, ids = two_groups(seed=7)

    def gap_and_std(c, r):
        levels = pair_levels(c, r)
        return float(levels[ids == 1].mean() - levels[ids == 0].mean()), float(levels.std(correction=0))

    gap, std = gap_and_std(chosen, reject)
    step = 1e-3
    grad_c, grad_r = level_gradients(chosen, reject, ids)
    new_gap, new_std = gap_and_std(chosen - step * grad_c, reject - step * grad_r)
    closed = gap / std - new_gap / new_std
    assert closed > 0 and abs(new_std - std) < 1e-3 * closed * std  # the std moves at second order only
    c, r = chosen.clone().requires_grad_(True), reject.clone().requires_grad_(True)
    fixed_temperature_term(c, r, ids, 1.0).backward()
    fixed_gap, fixed_std = gap_and_std(chosen - step * c.grad, reject - step * r.grad)
    assert std - fixed_std > 0.1 * closed * std  # first order: the fixed form's step shrinks the scale


@pytest.mark.parametrize("scale_free", [True, False])
def test_training_a_linear_reward_model_on_the_term_keeps_its_scale(scale_free):
    """Gradient descent on the level term alone, rewards w . x: with the scale-free term the gradient is orthogonal
    to w (the Euler identity above), so |w| never falls and the group gap / std does; the fixed-temperature form
    shrinks |w| on its way to the same F_L (the failure issue 21 reports, in a setting where the features let
    both forms close the gap)."""
    g = torch.Generator().manual_seed(1)
    n, d = 32, 5
    ids = torch.arange(n) % 2
    x_chosen = torch.randn(n, d, generator=g, dtype=torch.float64) + ids[:, None] * torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64)
    x_reject = torch.randn(n, d, generator=g, dtype=torch.float64) + ids[:, None] * torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64)
    w = torch.tensor([1.0, 0.5, -0.3, 0.2, 0.1], dtype=torch.float64, requires_grad=True)
    config = RewardFairnessConfig(level_reg=1.0, group_key="g")

    def gap_over_std():
        with torch.no_grad():
            levels = pair_levels(x_chosen @ w, x_reject @ w)
            return float((levels[ids == 1].mean() - levels[ids == 0].mean()) / levels.std(correction=0))

    norm0, ratio0 = float(w.detach().norm()), gap_over_std()
    norms = []
    for _ in range(200):
        w.grad = None
        chosen, reject = x_chosen @ w, x_reject @ w
        term = extra_terms(chosen, reject, config, group_ids=ids)[0] if scale_free else \
            fixed_temperature_term(chosen, reject, ids, 1.0)
        term.backward()
        with torch.no_grad():
            w -= 0.5 * w.grad
        norms.append(float(w.detach().norm()))
    if scale_free:
        assert all(b >= a - 1e-12 for a, b in zip([norm0] + norms, norms))  # |w| never falls
        assert gap_over_std() < 0.5 * ratio0
    else:
        assert norms[-1] < 0.9 * norm0  # the fixed form shrinks the scale (1.16 -> 0.84 here) on its way


def test_level_gradient_matches_finite_differences():
    chosen, reject = rewards(6, seed=5)
    ids = torch.tensor([0, 1, 0, 1, 2, 2])
    config = RewardFairnessConfig(level_reg=0.7, tau=-2.0, level_temperature=0.8, group_key="g")
    assert torch.autograd.gradcheck(
        lambda c, r: extra_terms(c, r, config, group_ids=ids)[0],
        (chosen.clone().requires_grad_(True), reject.clone().requires_grad_(True)),
    )


def test_reward_centering_is_trls_term_with_its_gradient():
    chosen, reject = rewards(8, seed=7)
    c, r = chosen.clone().requires_grad_(True), reject.clone().requires_grad_(True)
    term = reward_centering_term(c, r, 0.01)
    term.backward()
    assert float(term.detach()) == pytest.approx(0.01 * sum((a + b) ** 2 for a, b in zip(chosen.tolist(), reject.tolist())) / 8,
                                        rel=1e-14)
    assert torch.allclose(c.grad, 2 * 0.01 * (chosen + reject) / 8, rtol=1e-13, atol=0)
    assert torch.equal(c.grad, r.grad)


def test_batch_sum_reg_is_b_times_the_squared_mean_reward():
    chosen, reject = rewards(5, seed=11)
    c, r = chosen.clone().requires_grad_(True), reject.clone().requires_grad_(True)
    term = batch_sum_term(c, r, 0.3)
    term.backward()
    everything = chosen.tolist() + reject.tolist()
    mean = sum(everything) / 10
    assert float(term.detach()) == pytest.approx(0.3 * 5 * mean**2, rel=1e-13)
    assert float(term.detach()) == pytest.approx(0.3 * sum(everything) ** 2 / (4 * 5), rel=1e-13)
    assert torch.allclose(c.grad, torch.full_like(chosen, 0.3 * mean), rtol=1e-12, atol=0)  # d/dr_j = LAMBDA * mean
    assert torch.allclose(r.grad, c.grad, rtol=1e-12, atol=0)


def test_off_adds_nothing_and_each_term_reports_its_metric():
    chosen, reject = rewards(4, seed=1)
    assert extra_terms(chosen, reject, RewardFairnessConfig(reg=0.1)) == (None, {})
    config = RewardFairnessConfig(level_reg=0.5, reward_centering=0.01, batch_sum_reg=0.02)
    total, metrics = extra_terms(chosen, reject, config)
    assert set(metrics) == {"fairness/level_F", "fairness/level_term", "fairness/reward_centering",
                            "fairness/batch_sum_reg"}
    expected = metrics["fairness/level_term"] + metrics["fairness/reward_centering"] + metrics["fairness/batch_sum_reg"]
    assert float(total) == pytest.approx(expected, rel=1e-14)
    log_f, _ = level_log_fairness(pair_levels(chosen, reject))
    assert metrics["fairness/level_F"] == pytest.approx(math.exp(float(log_f)), rel=1e-14)
    assert metrics["fairness/level_term"] == pytest.approx(-0.5 * math.exp(float(log_f)), rel=1e-14)


def test_gather_is_used_for_level_fairness_only():
    chosen, reject = rewards(4, seed=2)
    other_c, other_r = rewards(4, seed=9)
    calls = []

    def gather(levels, ids):
        calls.append(1)
        return torch.cat([levels, pair_levels(other_c, other_r)]), ids

    config = RewardFairnessConfig(level_reg=1.0, reward_centering=0.1)
    _, metrics = extra_terms(chosen, reject, config, gather=gather)
    log_f, _ = level_log_fairness(pair_levels(torch.cat([chosen, other_c]), torch.cat([reject, other_r])))
    assert calls == [1] and metrics["fairness/level_F"] == pytest.approx(math.exp(float(log_f)), rel=1e-14)
    assert metrics["fairness/reward_centering"] == pytest.approx(float(reward_centering_term(chosen, reject, 0.1)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("field", ["level_reg", "reward_centering", "batch_sum_reg"])
def test_strength_zero_is_bit_identical_to_bradley_terry(dtype, field):
    """Loss and every parameter gradient of BT + the term at strength 0 equal plain BT's, bit for bit."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1).to(dtype)
    x_chosen, x_reject = torch.randn(8, 6, dtype=dtype), torch.randn(8, 6, dtype=dtype)
    ids = torch.tensor([0, 1] * 4)

    def run(config):
        model.zero_grad()
        chosen, reject = model(x_chosen).squeeze(-1), model(x_reject).squeeze(-1)
        loss = -torch.nn.functional.logsigmoid(chosen - reject).mean()
        if config is not None:
            total, _ = extra_terms(chosen, reject, config, group_ids=ids)
            loss = (loss + total).to(loss.dtype)
        loss.backward()
        return loss.detach().clone(), [p.grad.clone() for p in model.parameters()]

    plain_loss, plain_grads = run(None)
    loss, grads = run(RewardFairnessConfig(group_key="g", **{field: 0.0}))
    assert torch.equal(loss, plain_loss) and loss.dtype == dtype
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads))


@pytest.mark.parametrize("field, flag", [("level_reg", "--fairness_level_reg"), ("reward_centering", "--reward_centering"),
                                         ("batch_sum_reg", "--batch_sum_reg")])
@pytest.mark.parametrize("value", [-0.1, float("inf")])
def test_config_refuses_negative_or_infinite_strengths(field, flag, value):
    with pytest.raises(FairnessConfigError, match=flag):
        RewardFairnessConfig(**{field: value})


@pytest.mark.parametrize("config", [
    RewardFairnessConfig(level_reg=2.0, group_key="g"),
    RewardFairnessConfig(reg=0.5, reward_centering=0.1, batch_sum_reg=0.2),
    RewardFairnessConfig(coef=0.5, coef_form="inverse", level_reg=1.0),
], ids=["level", "fr+baselines", "fc+level"])
def test_fair_pairwise_loss_adds_the_terms_and_logs_them(config):
    """Through the reward-model loss (`FairPairWiseLoss`, the host hook's loss): loss = its pairwise loss + the
    terms, and the step metrics carry them."""
    from openrlhf_fair.core.losses import FairPairWiseLoss

    base_loss = lambda c, r, m: -torch.nn.functional.logsigmoid(c - r).mean()  # noqa: E731
    chosen, reject = (t.float().requires_grad_(True) for t in rewards(8, seed=4))
    ids = torch.tensor([0, 1] * 4)
    without = RewardFairnessConfig(**{k: v for k, v in vars(config).items()
                                      if k not in ("level_reg", "reward_centering", "batch_sum_reg")})
    plain = FairPairWiseLoss(base_loss, without)(chosen, reject, None, group_ids=ids)
    loss_fn = FairPairWiseLoss(base_loss, config)
    loss = loss_fn(chosen, reject, None, group_ids=ids)
    extra, metrics = extra_terms(chosen, reject, config, ids)
    assert float(loss) == pytest.approx(float(plain) + float(extra), rel=1e-6)
    assert metrics and all(loss_fn.last_metrics[k] == pytest.approx(v, rel=1e-12) for k, v in metrics.items())


def test_fair_pairwise_loss_with_strength_zero_is_the_host_loss_bit_for_bit():
    from openrlhf_fair.core.losses import FairPairWiseLoss

    base_loss = lambda c, r, m: -torch.nn.functional.logsigmoid(c - r).mean()  # noqa: E731
    ids = torch.tensor([0, 1, 1, 0])
    grads = []
    for config in (None, RewardFairnessConfig(group_key="g", level_reg=0.0, reward_centering=0.0, batch_sum_reg=0.0)):
        chosen, reject = (t.float().requires_grad_(True) for t in rewards(4, seed=6))
        loss = base_loss(chosen, reject, None) if config is None else FairPairWiseLoss(base_loss, config)(
            chosen, reject, None, group_ids=ids)
        loss.backward()
        grads.append((loss.detach(), chosen.grad, reject.grad))
    assert all(torch.equal(a, b) for a, b in zip(*grads))
