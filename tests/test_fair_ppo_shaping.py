"""PPO fairness shaping math (openrlhf_fair.core.shaping): weights as derived, float64 references, units, clipping."""

import math

import pytest
import torch

from fair_reference import fairness, fairness_objective
from openrlhf_fair.errors import FairnessConfigError, FairnessInputError
from openrlhf_fair.core.shaping import (
    agent_weights,
    fairness_weights,
    label_agent_ids,
    prompt_agent_ids,
    remembered_allocation,
)
from openrlhf_fair.settings import PPOFairnessConfig

NO_CLIP = (0.0, 1e9)


def reference_weights(x: torch.Tensor, gamma: float, alpha: float, tau: float) -> torch.Tensor:
    """w_k = K * dPsi/dx_k by float64 autograd of Psi = U * F**gamma + alpha * F, F from the fairness core."""
    x = x.detach().to(torch.float64).clone().requires_grad_(True)
    F = fairness(x, tau, normalize=True)
    psi = x.mean() * F**gamma + alpha * F
    (grad,) = torch.autograd.grad(psi, x)
    return x.numel() * grad


def expected_sample_weights(raw_agent, ids, clip):
    w = raw_agent[ids].clamp(*clip)
    return w / w.mean()


@pytest.mark.parametrize("tau", [-1.0, -3.0, -1e-3, 0.0, 1e-9, 0.05, 0.5, 2.0])
@pytest.mark.parametrize("gamma,alpha", [(0.5, 0.0), (0.0, 0.1), (0.5, 0.1), (2.0, 1.0)])
def test_closed_form_matches_float64_autograd(tau, gamma, alpha):
    if gamma > 0 and tau > 1:
        pytest.skip("F**gamma undefined for tau > 1 (rejected by the config)")
    g = torch.Generator().manual_seed(7)
    rewards = torch.randn(40, generator=g, dtype=torch.float64) * 2
    config = PPOFairnessConfig(coef=gamma, reg=alpha, tau=tau)
    w, F, U = agent_weights(torch.nn.functional.logsigmoid(rewards), config)
    x = torch.sigmoid(rewards)
    ref = reference_weights(x, gamma, alpha, tau)
    assert torch.allclose(w, ref, rtol=1e-11, atol=1e-12), (w - ref).abs().max()
    assert F == pytest.approx(float(fairness(x, tau)), rel=1e-12)
    assert U == pytest.approx(float(x.mean()), rel=1e-14)
    # the reference in the docstring of fairness_objective agrees as well
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fairness_objective(xg, config), xg)
    assert torch.allclose(40 * grad, ref, rtol=1e-11, atol=1e-12)


def test_jain_case_has_the_documented_closed_form():
    x = torch.tensor([0.1, 0.3, 0.5, 0.9], dtype=torch.float64)
    config = PPOFairnessConfig(reg=1.0, tau=-1.0)
    w, F, U = agent_weights(x.log(), config)
    h = 2 * (1 - x * x.sum() / (x * x).sum())
    jain = x.sum() ** 2 / (4 * (x * x).sum())
    assert F == pytest.approx(float(jain), rel=1e-14)
    assert torch.allclose(w, 1 + F * h / U, rtol=1e-13)


@pytest.mark.parametrize("gamma,alpha", [(0.5, 0.0), (0.0, 0.1), (0.0, 1.0), (0.5, 0.5)])
def test_under_rewarded_agents_get_weight_above_one(gamma, alpha):
    rewards = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0, 4.0], dtype=torch.float64)
    config = PPOFairnessConfig(coef=gamma, reg=alpha, weight_clip=NO_CLIP)
    shaping = fairness_weights(rewards, torch.arange(6), config)
    x = torch.sigmoid(rewards)
    below = x < (x * x).sum() / x.sum()  # Jain: agents below sum x^2 / sum x are pushed up
    assert 0 < int(below.sum()) < 6
    # the derived weights: above the neutral value F**gamma exactly for the under-rewarded agents
    neutral = shaping.fairness**gamma
    raw = shaping.raw_agent_weights
    assert (raw[below] > neutral).all() and (raw[~below] < neutral).all(), raw
    # after renormalisation to mean 1: monotone in the allocation, the poorest above 1, the richest below
    w = shaping.sample_weights
    assert torch.all(w[:-1] > w[1:]) and w[0] > 1 > w[-1]
    assert w.mean().item() == pytest.approx(1.0, abs=1e-14)


def test_weights_are_exactly_one_when_both_coefficients_are_zero():
    rewards = torch.randn(64, dtype=torch.float64) * 5
    for unit_ids in (torch.arange(64), torch.arange(64) // 8):
        shaping = fairness_weights(rewards, unit_ids, PPOFairnessConfig(tau=-2.0, unit="prompt"))
        assert torch.equal(shaping.sample_weights, torch.ones(64, dtype=torch.float64))
        assert shaping.num_clipped == 0


def test_weights_change_with_coefficients_and_grow_with_them():
    rewards = torch.linspace(-2, 2, 16, dtype=torch.float64)
    spread = []
    for alpha in (0.1, 0.5, 2.0):
        w = fairness_weights(rewards, torch.arange(16), PPOFairnessConfig(reg=alpha, weight_clip=NO_CLIP)).sample_weights
        spread.append(float(w.max() - w.min()))
    assert 0 < spread[0] < spread[1] < spread[2]


def test_clipping_then_renormalisation_to_mean_one():
    rewards = torch.tensor([-8.0, -6.0, 0.0, 0.0, 0.0, 0.0, 6.0, 8.0], dtype=torch.float64)
    config = PPOFairnessConfig(reg=5.0, weight_clip=(0.25, 2.0))
    shaping = fairness_weights(rewards, torch.arange(8), config)
    raw = shaping.raw_agent_weights
    assert raw.max() > 2.0 and raw.min() < 0.25  # the example really exercises both bounds
    expected = expected_sample_weights(raw, shaping.agent_ids, (0.25, 2.0))
    assert torch.allclose(shaping.sample_weights, expected, rtol=0, atol=1e-15)
    assert shaping.sample_weights.mean().item() == pytest.approx(1.0, abs=1e-15)
    assert shaping.num_clipped == int(((raw < 0.25) | (raw > 2.0)).sum())
    # the default clip floor is 0: a weight never flips an advantage's sign
    default = fairness_weights(rewards, torch.arange(8), PPOFairnessConfig(reg=5.0))
    assert (default.sample_weights >= 0).all() and (default.raw_agent_weights < 0).any()


def test_prompt_unit_groups_by_index_and_uses_the_mean_allocation():
    n = 4
    index = torch.tensor([5, 0, 1, 7, 2, 3, 4, 6])  # shuffled order, as after OpenRLHF's micro-batch split
    rewards = torch.tensor([1.0, -1.0, -2.0, 3.0, 0.5, 0.0, 2.0, 1.5], dtype=torch.float64)
    ids = prompt_agent_ids(index, n)
    assert ids.tolist() == [1, 0, 0, 1, 0, 0, 1, 1]
    config = PPOFairnessConfig(coef=0.5, reg=0.2, unit="prompt", weight_clip=NO_CLIP)
    shaping = fairness_weights(rewards, ids, config)
    x_agents = torch.stack([torch.sigmoid(rewards[ids == k]).mean() for k in (0, 1)])
    assert torch.allclose(shaping.allocation, x_agents, rtol=1e-14)
    ref = reference_weights(x_agents, 0.5, 0.2, -1.0)
    assert torch.allclose(shaping.raw_agent_weights, ref, rtol=1e-12)
    assert torch.allclose(shaping.sample_weights, expected_sample_weights(ref, ids, NO_CLIP), rtol=1e-12)
    # all samples of one prompt share a weight; the poorer prompt (0) gets more
    w = shaping.sample_weights
    assert len(set(w[ids == 0].tolist())) == 1 and w[ids == 0][0] > 1 > w[ids == 1][0]


def test_prompt_agent_ids_edge_cases():
    """One sample per prompt is allowed (each sample its own agent); 0 is refused; ids are int64 whatever
    integer type the index comes in (the scatter/index_add in fairness_weights need int64)."""
    assert prompt_agent_ids([3, 0, 2], 1).tolist() == [3, 0, 2]
    with pytest.raises(FairnessInputError, match="n_samples_per_prompt must be >= 1"):
        prompt_agent_ids([0, 1], 0)
    ids = prompt_agent_ids(torch.tensor([5, 2, 7], dtype=torch.int32), 2)
    assert ids.dtype == torch.int64 and ids.tolist() == [2, 1, 3]


def test_label_agent_ids_edge_cases():
    """One label is one agent; no label at all is refused; labels of mixed types sort by their text."""
    ids, names = label_agent_ids(["only"])
    assert ids.tolist() == [0] and names == ["only"]
    with pytest.raises(FairnessInputError, match="no labels"):
        label_agent_ids([])
    ids, names = label_agent_ids([2, "a", 10, 2])
    assert names == [10, 2, "a"] and ids.tolist() == [1, 2, 0, 1]


def test_metrics_of_rewards_far_below_zero_use_the_scale_free_allocation():
    """x = sigmoid(r) underflows to 0 for r around -800, but Jain and Gini are scale invariant: computed from
    exp(log x - max log x) they are those of exp(r) (sigmoid(r) ~ exp(r) there): here (1, e, e^2)."""
    metrics = fairness_weights(torch.tensor([-801.0, -800.0, -799.0], dtype=torch.float64), torch.arange(3),
                               PPOFairnessConfig(reg=0.1)).metrics()
    x = [math.exp(k) for k in (0, 1, 2)]
    assert metrics["jain"] == pytest.approx(sum(x) ** 2 / (3 * sum(v * v for v in x)), rel=1e-9)
    gini = sum(abs(a - b) for a in x for b in x) / (2 * 9 * (sum(x) / 3))
    assert metrics["gini"] == pytest.approx(gini, rel=1e-9)


def test_label_unit_and_unequal_group_sizes():
    labels = ["harmless", "helpful", "helpful", "helpful", "code", "harmless"]
    ids, names = label_agent_ids(labels)
    assert names == ["code", "harmless", "helpful"] and ids.tolist() == [1, 2, 2, 2, 0, 1]
    rewards = torch.tensor([-1.0, 2.0, 1.0, 3.0, 0.0, -2.0], dtype=torch.float64)
    shaping = fairness_weights(rewards, ids, PPOFairnessConfig(reg=1.0, unit="label:category", weight_clip=NO_CLIP))
    x = torch.stack([torch.sigmoid(rewards[ids == k]).mean() for k in range(3)])
    ref = reference_weights(x, 0.0, 1.0, -1.0)
    assert torch.allclose(shaping.sample_weights, expected_sample_weights(ref, ids, NO_CLIP), rtol=1e-12)
    w = shaping.sample_weights
    assert w[ids == 1][0] > w[ids == 0][0] > w[ids == 2][0]  # harmless (poorest) > code > helpful
    assert w.mean().item() == pytest.approx(1.0, abs=1e-15)  # mean over samples, not over labels


def test_one_agent_gives_unit_weights_and_metrics():
    shaping = fairness_weights(torch.tensor([0.3, -1.0, 2.0]), torch.zeros(3, dtype=torch.long), PPOFairnessConfig(coef=0.5))
    assert shaping.num_agents == 1 and torch.equal(shaping.sample_weights, torch.ones(3, dtype=torch.float64))
    metrics = shaping.metrics()
    assert metrics["F"] == pytest.approx(1.0) and metrics["num_agents"] == 1.0


def test_metrics_are_the_allocations_inequality():
    rewards = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    metrics = fairness_weights(rewards, torch.arange(4), PPOFairnessConfig(coef=0.5)).metrics()
    x = torch.sigmoid(rewards.double())
    assert metrics["jain"] == pytest.approx(float(x.sum() ** 2 / (4 * (x * x).sum())), rel=1e-12)
    assert metrics["F"] == pytest.approx(metrics["jain"], rel=1e-12)  # tau = -1
    diffs = (x[:, None] - x[None, :]).abs().sum()
    assert metrics["gini"] == pytest.approx(float(diffs / (2 * 16 * x.mean())), rel=1e-12)
    assert metrics["utility"] == pytest.approx(float(x.mean()))
    assert set(metrics) >= {"weight_min", "weight_max", "clipped_frac", "num_agents"}


def test_extreme_rewards_stay_finite():
    rewards = torch.tensor([-5000.0, -800.0, 0.0, 900.0, 1e4], dtype=torch.float64)
    for tau in (-1.0, 0.0, 0.5, 3.0):
        config = PPOFairnessConfig(reg=0.1, tau=tau) if tau > 1 else PPOFairnessConfig(coef=0.5, reg=0.1, tau=tau)
        shaping = fairness_weights(rewards, torch.arange(5), config)
        assert torch.isfinite(shaping.sample_weights).all(), (tau, shaping.sample_weights)
        assert shaping.sample_weights.mean().item() == pytest.approx(1.0)


def test_temperature_softens_the_allocation():
    rewards = torch.tensor([-20.0, -10.0, 10.0, 20.0], dtype=torch.float64)
    sharp = fairness_weights(rewards, torch.arange(4), PPOFairnessConfig(reg=0.5, weight_clip=NO_CLIP))
    soft = fairness_weights(rewards, torch.arange(4), PPOFairnessConfig(reg=0.5, temperature=20.0, weight_clip=NO_CLIP))
    assert torch.allclose(soft.allocation, torch.sigmoid(rewards / 20.0))
    assert soft.fairness > sharp.fairness


def test_nan_rewards_are_rejected():
    with pytest.raises(FairnessInputError, match="NaN/Inf"):
        fairness_weights(torch.tensor([0.0, math.nan]), torch.arange(2), PPOFairnessConfig(coef=0.5))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tau=1.0), "degenerate"),
        (dict(coef=0.5, tau=2.0), "cannot be served"),
        (dict(coef=-0.1), ">= 0"),
        (dict(reg=math.inf), "finite"),
        (dict(temperature=0.0), "> 0"),
        (dict(unit="label:"), "label:KEY"),
        (dict(unit="group"), "label:KEY"),
        (dict(weight_clip=(1.5, 5.0)), "LOW <= 1"),
        (dict(weight_clip=(-0.5, 5.0)), "0 <= LOW"),
        (dict(weight_clip=(0.0, 0.5)), "1 <= HIGH"),
        (dict(history=1.0, unit="prompt"), r"\[0, 1\)"),
        (dict(history=-0.1, unit="prompt"), r"\[0, 1\)"),
        (dict(history=0.9), "label:KEY or --fair_unit prompt"),
    ],
)
def test_config_rejects_settings_that_cannot_work(kwargs, match):
    with pytest.raises(FairnessConfigError, match=match):
        PPOFairnessConfig(**kwargs)


def test_config_payload_round_trip_and_modes():
    config = PPOFairnessConfig(coef=0.5, reg=0.1, tau=-2.0, temperature=3.0, unit="label:category", weight_clip=(0.1, 4.0),
                               history=0.8)
    assert PPOFairnessConfig.from_payload(config.to_payload()) == config
    assert "history=0.8" in config.describe() and "history" not in PPOFairnessConfig(reg=1.0).describe()
    assert config.label_key == "category" and config.enabled
    assert not PPOFairnessConfig(unit="prompt").enabled and PPOFairnessConfig().label_key is None
    # with FR alone tau > 1 is allowed (F negative, its gradient still points toward fairness)
    w = fairness_weights(torch.tensor([-1.0, 0.0, 2.0]), torch.arange(3), PPOFairnessConfig(reg=1.0, tau=3.0)).sample_weights
    assert w[0] > 1 > w[2]


def test_flags_build_the_config_and_stay_off_by_default():
    from openrlhf_fair.cli.flags import fairness_help, parse_fairness_args

    config, rest = parse_fairness_args(
        "train_ppo_ray",
        ["--actor.model_name_or_path", "m", "--fair_coef", "0.5", "--fair_unit", "label:cat", "--fair_weight_clip", "0.1", "3"],
    )
    assert config == PPOFairnessConfig(coef=0.5, unit="label:cat", weight_clip=(0.1, 3.0))
    assert rest == ["--actor.model_name_or_path", "m"]
    assert parse_fairness_args("train_ppo_ray", ["--algo.advantage.estimator", "gae"]) == (None, ["--algo.advantage.estimator", "gae"])
    assert parse_fairness_args("train_ppo_ray", ["--fair_unit", "prompt"])[0] == PPOFairnessConfig(unit="prompt")
    text = fairness_help("train_ppo_ray")
    for flag in ("--fair_coef", "--fair_reg", "--fair_tau", "--fair_temperature", "--fair_unit", "--fair_weight_clip"):
        assert flag in text
    with pytest.raises(SystemExit):
        parse_fairness_args("train_ppo_ray", ["--fair_tau", "1"])


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0, 100.0])
@pytest.mark.parametrize("K", [2, 64, 4096])
def test_paper_defaults_do_not_explode_on_centred_rewards(scale, K):
    """gamma = 0.5, alpha = 0.1, tau = -1: for rewards around 0 (OpenRLHF's normalised rewards) no weight is clipped."""
    rewards = torch.randn(K, generator=torch.Generator().manual_seed(K)) * scale
    shaping = fairness_weights(rewards, torch.arange(K), PPOFairnessConfig(coef=0.5, reg=0.1))
    w = shaping.sample_weights
    assert shaping.num_clipped == 0 and torch.isfinite(w).all()
    assert 0.05 < w.min() <= 1 <= w.max() < 2.5, (float(w.min()), float(w.max()))


@pytest.mark.parametrize("gamma,alpha,tau", [(0.5, 0.0, -1.0), (0.0, 0.5, -1.0), (0.5, 0.1, 0.0), (0.0, 1.0, 3.0)])
def test_weighted_policy_gradient_is_the_gradient_of_psi(gamma, alpha, tau):
    """The first-order argument on a tabular policy (K prompts, A actions, exact expectations): the policy
    gradient with each agent's baselined advantages scaled by w_k equals K * grad Psi; the plain one is K * grad U."""
    K, A = 5, 4
    g = torch.Generator().manual_seed(11)
    theta = torch.randn(K, A, generator=g, dtype=torch.float64, requires_grad=True)
    signal = torch.sigmoid(torch.randn(K, A, generator=g, dtype=torch.float64) * 2)  # sigmoid(r / T) per action
    config = PPOFairnessConfig(coef=gamma, reg=alpha, tau=tau)

    pi = torch.softmax(theta, dim=-1)
    x = (pi * signal).sum(-1)  # each agent's expected resource X_k(theta)
    (grad_psi,) = torch.autograd.grad(fairness_objective(x, config), theta, retain_graph=True)
    (grad_u,) = torch.autograd.grad(x.mean(), theta)

    w, _, _ = agent_weights(x.detach().log(), config)
    advantages = signal - (pi * signal).sum(-1, keepdim=True)  # any per-prompt baseline: here the mean
    log_pi = torch.log_softmax(theta, dim=-1)
    advantages = advantages.detach()
    plain = torch.autograd.grad((pi.detach() * advantages * log_pi).sum(), theta, retain_graph=True)[0]
    shaped = torch.autograd.grad((pi.detach() * advantages * w[:, None] * log_pi).sum(), theta)[0]
    assert torch.allclose(plain, K * grad_u, rtol=1e-12, atol=1e-14)
    assert torch.allclose(shaped, K * grad_psi, rtol=1e-10, atol=1e-13)
    assert not torch.allclose(shaped / shaped.norm(), plain / plain.norm(), atol=1e-3)  # a different direction


# ---------------------------------------------------------------------------------------------- --fair_history
def reference_moving_average(batches, decay):
    """Plain float64 loop: m_k = decay m_k + (1 - decay) x_k for agents seen before, m_k = x_k for new ones."""
    memory, out = {}, []
    for keys, x in batches:
        row = []
        for key, value in zip(keys, x.tolist()):
            memory[key] = decay * memory[key] + (1 - decay) * value if key in memory else value
            row.append(memory[key])
        out.append(torch.tensor(row, dtype=torch.float64))
    return out


@pytest.mark.parametrize("decay", [0.0, 0.3, 0.9, 0.999])
def test_remembered_allocation_is_the_exponential_moving_average(decay):
    g = torch.Generator().manual_seed(3)
    batches = []
    for step in range(6):  # agents come and go: "c" joins at step 2, "a" skips step 4
        keys = ["a", "b"] + (["c"] if step >= 2 else [])
        if step == 4:
            keys = keys[1:]
        batches.append((keys, torch.rand(len(keys), generator=g, dtype=torch.float64) * 0.9 + 0.05))
    history = {}
    for (keys, x), expected in zip(batches, reference_moving_average(batches, decay)):
        passed, before = history, dict(history)
        log_m, history = remembered_allocation(x.log(), keys, passed, decay)
        assert torch.allclose(log_m.exp(), expected, rtol=1e-13, atol=0)
        assert passed == before  # the caller's dict is left as it was
        assert history == {**before, **dict(zip(keys, log_m.tolist()))}


def test_history_decay_zero_gives_todays_weights_bit_for_bit():
    g = torch.Generator().manual_seed(5)
    rewards = torch.randn(12, generator=g, dtype=torch.float64) * 2
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 0, 1, 2])
    config = PPOFairnessConfig(coef=0.5, reg=0.1, unit="label:category")
    today = fairness_weights(rewards, ids, config)
    log_m, history = remembered_allocation(today.log_allocation, ["x", "y", "z"], {"x": -3.0, "y": -0.1}, 0.0)
    assert log_m.equal(today.log_allocation)
    again = fairness_weights(rewards, ids, config, log_allocation=log_m)
    assert again.sample_weights.equal(today.sample_weights) and again.fairness == today.fairness
    assert history == dict(zip(["x", "y", "z"], today.log_allocation.tolist()))


def test_history_keeps_the_weight_of_an_agent_under_rewarded_batch_after_batch():
    """Five batches where "poor" is under-rewarded, then one where it is lucky: alone, that batch weighs "poor"
    below 1; remembered (decay 0.9), "poor" is still the under-rewarded agent and keeps a weight above 1."""
    config = PPOFairnessConfig(reg=1.0, unit="label:category", history=0.9)
    ids = torch.tensor([0, 0, 1, 1])
    history = {}
    for rewards in [[2.0, 2.0, -2.0, -2.0]] * 5 + [[0.0, 0.0, 0.5, 0.5]]:
        rewards = torch.tensor(rewards, dtype=torch.float64)
        alone = fairness_weights(rewards, ids, config)
        log_m, history = remembered_allocation(alone.log_allocation, ["rich", "poor"], history, config.history)
        remembered = fairness_weights(rewards, ids, config, log_allocation=log_m)
    assert alone.sample_weights[2] < 1.0 < remembered.sample_weights[2]
    # m after 5 equal batches is that batch's x itself, then one step toward the lucky batch's
    expected = 0.9 * torch.sigmoid(torch.tensor(-2.0, dtype=torch.float64)) + 0.1 * torch.sigmoid(
        torch.tensor(0.5, dtype=torch.float64))
    assert math.exp(history["poor"]) == pytest.approx(float(expected), rel=1e-12)


def test_history_rejects_mismatched_input():
    with pytest.raises(FairnessInputError, match="2 agent keys for 3"):
        remembered_allocation(torch.zeros(3), ["a", "b"], {}, 0.5)
    with pytest.raises(FairnessInputError, match=r"\[0, 1\)"):
        remembered_allocation(torch.zeros(1), ["a"], {}, 1.0)
    with pytest.raises(FairnessInputError, match="log_allocation has 2 values for 3 agents"):
        fairness_weights(torch.zeros(3), torch.arange(3), PPOFairnessConfig(reg=1.0), log_allocation=torch.zeros(2))
