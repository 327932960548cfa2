"""Tests for metrics.pairwise_eval_metrics, the eval metrics of RM/DPO training and of the report.

Expected values are computed by hand (plain python floats) from the definitions, so each quantity is pinned:
per-group mean margin, per-group mean reward (chosen and rejected together), the gaps, and the temperature in F.
"""

import math

import pytest
import torch

from openrlhf_fair.errors import FairnessInputError
from openrlhf_fair.core.measures import pairwise_eval_metrics

CHOSEN = [1.0, 2.0, 0.0, -1.0, 0.5, 0.2]
REJECT = [0.0, 0.0, 1.0, 0.0, 0.0, 0.4]
IDS = [0, 0, 1, 1, 1, 0]
NAMES = ["harmless", "helpful"]
MARGINS = [c - r for c, r in zip(CHOSEN, REJECT)]  # 1, 2, -1, -1, 0.5, -0.2


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def jain(x: list[float]) -> float:
    return sum(x) ** 2 / (len(x) * sum(v * v for v in x))


def gini(x: list[float]) -> float:  # mean absolute difference over twice the mean
    n = len(x)
    return sum(abs(a - b) for a in x for b in x) / (n * n) / (2 * sum(x) / n)


def lan_fairness(x: list[float], tau: float) -> float:  # f_tau(x) / n, the direct power form
    total = sum(x)
    return math.copysign(1.0, 1 - tau) * sum((v / total) ** (1 - tau) for v in x) ** (1 / tau) / len(x)


def run(temperature=2.0, tau=-1.0, ids=IDS, names=NAMES):
    return pairwise_eval_metrics(
        torch.tensor(CHOSEN), torch.tensor(REJECT), tau=tau, temperature=temperature, group_ids=ids, group_names=names
    )


def test_per_group_values_are_hand_computed():
    out = run()
    assert out["fairness/acc/harmless"] == pytest.approx(2 / 3) and out["fairness/acc/helpful"] == pytest.approx(1 / 3)
    # mean reward of the group's chosen AND rejected responses (not the chosen ones only, not the margins)
    assert out["fairness/reward/harmless"] == pytest.approx((1 + 2 + 0.2 + 0 + 0 + 0.4) / 6)
    assert out["fairness/reward/helpful"] == pytest.approx((0 - 1 + 0.5 + 1 + 0 + 0) / 6)
    # mean margin chosen - rejected (not a sum, not the rewards)
    assert out["fairness/margin/harmless"] == pytest.approx((1 + 2 - 0.2) / 3)
    assert out["fairness/margin/helpful"] == pytest.approx((-1 - 1 + 0.5) / 3)
    assert out["fairness/acc_gap"] == pytest.approx(1 / 3)
    assert out["fairness/reward_gap"] == pytest.approx(3.6 / 6 - 0.5 / 6)  # 31/60, != the margin gap
    assert out["fairness/margin_gap"] == pytest.approx(2.8 / 3 + 1.5 / 3)  # 43/30
    assert out["fairness/worst_group_acc"] == pytest.approx(1 / 3)
    assert all(type(v) is float for v in out.values())


def test_temperature_enters_F_jain_gini_and_F_groups():
    T = 2.0
    out = run(temperature=T)
    x = [sigmoid(m / T) for m in MARGINS]
    assert out["fairness/F"] == pytest.approx(jain(x), rel=1e-9)  # tau = -1: Jain's index of sigmoid(m / T)
    assert out["fairness/jain"] == pytest.approx(jain(x), rel=1e-9)
    assert out["fairness/gini"] == pytest.approx(gini(x), rel=1e-9)
    groups = [sum(x[i] for i in range(6) if IDS[i] == g) / 3 for g in (0, 1)]
    assert out["fairness/F_groups"] == pytest.approx(jain(groups), rel=1e-9)
    at_one = [sigmoid(m) for m in MARGINS]
    assert abs(out["fairness/F"] - jain(at_one)) > 1e-3  # the temperature is not ignored
    assert abs(run(temperature=1.0)["fairness/F"] - jain(at_one)) < 1e-9


@pytest.mark.parametrize("tau", [0.5, 3.0, -2.0])
def test_F_follows_tau(tau):
    T = 0.7
    out = run(temperature=T, tau=tau)
    x = [sigmoid(m / T) for m in MARGINS]
    assert out["fairness/F"] == pytest.approx(lan_fairness(x, tau), rel=1e-9)
    groups = [sum(x[i] for i in range(6) if IDS[i] == g) / 3 for g in (0, 1)]
    assert out["fairness/F_groups"] == pytest.approx(lan_fairness(groups, tau), rel=1e-9)
    assert out["fairness/jain"] == pytest.approx(jain(x), rel=1e-9)  # Jain does not depend on tau


def test_without_groups_only_the_pooled_metrics():
    out = pairwise_eval_metrics(CHOSEN, REJECT, tau=-1.0, temperature=1.0)
    assert set(out) == {"fairness/F", "fairness/jain", "fairness/gini"}


def test_empty_groups_are_left_out_and_names_made_safe():
    ids = [0, 0, 2, 2, 2, 0]  # group 1 has no pair
    out = run(ids=ids, names=["harm less", "unused", "help/ful"])
    assert "fairness/acc/unused" not in out and "fairness/margin/unused" not in out
    assert out["fairness/acc/harm_less"] == pytest.approx(2 / 3) and out["fairness/acc/help_ful"] == pytest.approx(1 / 3)
    assert out["fairness/acc_gap"] == pytest.approx(1 / 3)  # the empty group does not count as 0
    assert "fairness/F_groups" in out


def test_one_group_has_zero_gaps_and_no_F_groups():
    out = run(ids=[0] * 6, names=["all"])
    assert out["fairness/acc_gap"] == 0.0 and out["fairness/reward_gap"] == 0.0 and out["fairness/margin_gap"] == 0.0
    assert out["fairness/margin/all"] == pytest.approx(sum(MARGINS) / 6)
    assert "fairness/F_groups" not in out


def test_default_group_names_are_the_ids():
    out = run(names=None)
    assert out["fairness/acc/0"] == pytest.approx(2 / 3) and out["fairness/acc/1"] == pytest.approx(1 / 3)


def test_extreme_margins_give_an_infinite_F_not_an_error():
    # tau = 5: log|F| = (1/5) log sum p^-4 ~ 4 * 1000 / 5 = 800 overflows exp; F < 0 for tau > 1
    out = pairwise_eval_metrics([200.0, -1000.0, 0.0], [0.0, 0.0, 0.0], tau=5.0, temperature=1.0)
    assert out["fairness/F"] == -math.inf
    x = [1.0, 0.0, 0.5]  # sigmoid(200), sigmoid(-1000) and sigmoid(0) in float64
    assert out["fairness/jain"] == pytest.approx(jain(x)) and out["fairness/gini"] == pytest.approx(gini(x))


@pytest.mark.parametrize(
    "chosen, reject, ids",
    [([1.0, float("nan")], [0.0, 0.0], None), ([1.0, 2.0], [0.0], None), ([1.0, 2.0], [0.0, 0.0], [0]), ([], [], None)],
)
def test_bad_input_raises(chosen, reject, ids):
    with pytest.raises(FairnessInputError):
        pairwise_eval_metrics(chosen, reject, tau=-1.0, temperature=1.0, group_ids=ids, group_names=["a"] if ids else None)


def test_group_names_that_collide_as_metric_names_are_refused():
    with pytest.raises(FairnessInputError, match="both become the metric name 'help_ful'"):
        run(names=["help ful", "help/ful"])
