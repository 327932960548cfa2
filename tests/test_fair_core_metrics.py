"""Tests for openrlhf_fair.core.measures: inequality measures and group-wise summaries for reports."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fair_reference import inequality_summary
from openrlhf_fair.errors import FairnessInputError
from fair_reference import fairness
from openrlhf_fair.core.measures import batched_pair_metrics, gini_coefficient, group_gap, group_means, jain_index, pairwise_eval_metrics

FAST = settings(max_examples=60, deadline=None)
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]
non_negative_lists = st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 100.0)), min_size=1, max_size=40).filter(
    lambda v: sum(v) > 0
)
positive_lists = st.lists(st.floats(0.01, 100.0), min_size=1, max_size=40)
# measures of inequality: higher means less fair (Jain is the odd one out: higher means fairer)
INEQUALITY = {
    "gini": gini_coefficient,
}


# ------------------------------------------------------------------------------------------ known values
def test_known_values():
    equal = [2.0, 2.0, 2.0, 2.0]
    one_has_all = [0.0, 0.0, 0.0, 5.0]
    assert jain_index(equal) == pytest.approx(1.0)
    assert jain_index(one_has_all) == pytest.approx(0.25)
    assert gini_coefficient(equal) == pytest.approx(0.0, abs=1e-15)
    assert gini_coefficient(one_has_all) == pytest.approx(0.75)  # 1 - 1/n
    assert jain_index([3.0]) == 1.0 and gini_coefficient([3.0]) == 0.0


def gini_reference(values):
    n, mean = len(values), sum(values) / len(values)
    return sum(abs(a - b) for a, b in itertools.product(values, values)) / (2 * n * n * mean)


@given(non_negative_lists)
@FAST
def test_gini_matches_pairwise_definition(values):
    assert gini_coefficient(torch.tensor(values, dtype=torch.float64)) == pytest.approx(gini_reference(values), rel=1e-9, abs=1e-12)


@given(positive_lists)
@FAST
def test_jain_equals_fairness_tau_minus_one(values):
    x = torch.tensor(values, dtype=torch.float64)
    assert jain_index(x) == pytest.approx(fairness(x, -1.0).item(), rel=1e-12)


# ------------------------------------------------------------------------------------------ properties
@given(non_negative_lists)
@FAST
def test_bounds(values):
    n = len(values)
    assert 1.0 / n - 1e-12 <= jain_index(values) <= 1.0 + 1e-12
    assert -1e-12 <= gini_coefficient(values) <= 1.0 - 1.0 / n + 1e-12


@given(positive_lists, st.randoms(use_true_random=False), st.floats(1e-3, 1e3))
@FAST
def test_permutation_and_scale_invariance(values, rnd, scale):
    shuffled = list(values)
    rnd.shuffle(shuffled)
    x, y = torch.tensor(values, dtype=torch.float64), torch.tensor(shuffled, dtype=torch.float64)
    for name, measure in list(INEQUALITY.items()) + [("jain", jain_index)]:
        ref = measure(x)
        assert measure(y) == pytest.approx(ref, rel=1e-9, abs=1e-12), name
        assert measure(x * scale) == pytest.approx(ref, rel=1e-9, abs=1e-12), name


@given(positive_lists, st.data())
@FAST
def test_transfer_from_richer_to_poorer_never_raises_inequality(values, data):
    x = torch.tensor(values, dtype=torch.float64)
    i = data.draw(st.integers(0, len(values) - 1))
    j = data.draw(st.integers(0, len(values) - 1))
    rich, poor = (i, j) if x[i] >= x[j] else (j, i)
    delta = data.draw(st.floats(0.0, 0.5)) * (x[rich] - x[poor])
    y = x.clone()
    y[rich] -= delta
    y[poor] += delta
    for name, measure in INEQUALITY.items():
        assert measure(y) <= measure(x) + 1e-9 * (1 + abs(measure(x))), name
    assert jain_index(y) >= jain_index(x) - 1e-12


def test_transfer_strictly_changes_each_measure():
    """Guards the property test above against measures that are constant."""
    x, y = torch.tensor([1.0, 2.0, 6.0]), torch.tensor([1.5, 2.0, 5.5])
    for name, measure in INEQUALITY.items():
        assert measure(y) < measure(x), name
    assert jain_index(y) > jain_index(x)


def test_inequality_summary():
    """Every measure on x = (1, 2, 3, 4), worked out by hand in plain floats (mean 2.5)."""
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = {
        "jain": 10.0**2 / (4 * 30.0),  # (sum x)^2 / (n sum x^2)
        "gini": 20.0 / (2 * 4**2 * 2.5),  # sum_ij |x_i - x_j| = 20, over 2 n^2 mean
    }
    assert inequality_summary(x) == pytest.approx(expected, rel=1e-12)
    assert all(isinstance(v, float) for v in inequality_summary(x).values())


# ------------------------------------------------------------------------------------------ dtypes / devices
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int64])
def test_dtypes_and_devices(device, dtype):
    values = [1.0, 2.0, 3.0, 8.0]
    x = torch.tensor(values).to(dtype=dtype, device=device)
    for name, measure in list(INEQUALITY.items()) + [("jain", jain_index)]:
        got = measure(x)
        assert isinstance(got, float)
        assert got == pytest.approx(measure(torch.tensor(values, dtype=torch.float64)), rel=1e-12), name
    means, counts = group_means(x, torch.tensor([0, 1, 1, 3], device=device))
    assert means.device.type == device and means.dtype == torch.float64 and counts.dtype == torch.int64


# ------------------------------------------------------------------------------------------ groups
def test_group_means_with_empty_groups():
    values = torch.tensor([1.0, 2.0, 4.0, 10.0, 20.0])
    ids = torch.tensor([0, 0, 0, 3, 3])
    means, counts = group_means(values, ids, num_groups=5)
    assert counts.tolist() == [3, 0, 0, 2, 0]
    assert means[0].item() == pytest.approx(7.0 / 3) and means[3].item() == pytest.approx(15.0)
    assert torch.isnan(means[[1, 2, 4]]).all()
    # default num_groups = max id + 1
    means, counts = group_means(values, ids)
    assert means.numel() == 4 and counts.tolist() == [3, 0, 0, 2]
    assert float(group_gap(means.unsqueeze(0))[0]) == pytest.approx(15.0 - 7.0 / 3)  # the empty groups left out


def test_group_means_of_2d_input_and_one_group():
    means, counts = group_means(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.int32))
    assert means.tolist() == [1.0] and counts.tolist() == [6]
    assert float(group_gap(means.unsqueeze(0))[0]) == 0.0


def test_group_gap_leaves_out_empty_groups_per_row():
    means = torch.tensor([[0.9, math.nan, 0.6, 0.8], [math.nan, 2.0, math.nan, 5.0]], dtype=torch.float64)
    assert group_gap(means).tolist() == [pytest.approx(0.3), 3.0]


def test_group_accuracy():
    chosen = torch.tensor([1.0, 0.5, 2.0, 0.0, 3.0, 1.0], dtype=torch.float64)
    rejected = torch.tensor([0.0, 0.5, 1.0, 1.0, 2.0, 0.0], dtype=torch.float64)  # pair 1 is a tie: counts as wrong
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    summary, per_group = batched_pair_metrics(chosen[None], rejected[None], ids[None], 4)
    acc, counts = per_group["acc"][0], per_group["count"][0]
    assert acc[:3].tolist() == [0.5, 0.5, 1.0] and math.isnan(acc[3].item())
    assert counts.tolist() == [2, 2, 2, 0]
    assert float(summary["fairness/worst_group_acc"][0]) == 0.5
    assert float(summary["fairness/acc_gap"][0]) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------ bad inputs
ALL_MEASURES = list(INEQUALITY.values()) + [jain_index, inequality_summary]


@pytest.mark.parametrize("measure", ALL_MEASURES)
def test_nan_is_rejected(measure):
    with pytest.raises(FairnessInputError, match="NaN/Inf"):
        measure(torch.tensor([1.0, float("nan")]))


@pytest.mark.parametrize("measure", ALL_MEASURES)
def test_inf_is_rejected(measure):
    with pytest.raises(FairnessInputError, match="NaN/Inf"):
        measure(torch.tensor([1.0, float("inf")]))


@pytest.mark.parametrize("measure", ALL_MEASURES)
def test_empty_is_rejected(measure):
    with pytest.raises(FairnessInputError, match="empty"):
        measure(torch.tensor([]))


@pytest.mark.parametrize("measure", ALL_MEASURES)
def test_negative_is_rejected(measure):
    with pytest.raises(FairnessInputError, match="non-negative"):
        measure(torch.tensor([1.0, -0.5, 2.0]))


@pytest.mark.parametrize("measure", ALL_MEASURES)
def test_all_zero_is_rejected(measure):
    with pytest.raises(FairnessInputError, match="positive total"):
        measure(torch.zeros(3))


def test_group_means_rejects_bad_ids():
    values = torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(FairnessInputError, match="integer"):
        group_means(values, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(FairnessInputError, match="entries"):
        group_means(values, torch.tensor([0, 1]))
    with pytest.raises(FairnessInputError, match=">= 0"):
        group_means(values, torch.tensor([0, -1, 1]))
    with pytest.raises(FairnessInputError, match="out of range"):
        group_means(values, torch.tensor([0, 1, 5]), num_groups=3)
    with pytest.raises(FairnessInputError, match="NaN/Inf"):
        group_means(torch.tensor([1.0, float("nan"), 3.0]), torch.tensor([0, 1, 1]))
    with pytest.raises(FairnessInputError, match="empty"):
        group_means(torch.tensor([]), torch.tensor([], dtype=torch.int64))


def test_group_accuracy_rejects_mismatched_lengths():
    with pytest.raises(FairnessInputError, match="differ in length"):
        pairwise_eval_metrics(torch.ones(3), torch.zeros(2), tau=-1.0, temperature=1.0,
                              group_ids=torch.zeros(3, dtype=torch.int64))


def test_metric_safe_name_keeps_safe_characters_only():
    from openrlhf_fair.core.measures import metric_safe_name

    assert metric_safe_name("helpful_base.v1-a") == "helpful_base.v1-a"
    assert metric_safe_name("kind / topic: x") == "kind_topic_x"
    assert metric_safe_name("") == "_"
