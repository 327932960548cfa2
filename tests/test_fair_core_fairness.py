"""Tests for openrlhf_fair.core.fairness: Lan et al.'s f_tau in log space (see ../shared/notes/fairness-math.md)."""

import math
import warnings

import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fair_reference import direct_fairness, fairness, fairness_of_margins
from openrlhf_fair.core.fairness import fairness_sign, log_fairness, log_fairness_of_margins
from openrlhf_fair.errors import FairnessInputError
from openrlhf_fair.core.measures import jain_index

TAUS = [-5.0, -2.0, -1.0, -0.5, 0.3, 0.5, 0.9, 1.5, 2.0, 5.0]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]
FAST = settings(max_examples=60, deadline=None)


def mp_log_fairness(x, tau, normalize=True):
    """Independent 50-digit reference for log|f_tau(x)| (direct power form, Shannon form at tau = 0)."""
    with mpmath.workdps(50):
        x = [mpmath.mpf(float(v)) for v in x]
        total = mpmath.fsum(x)
        p = [v / total for v in x]
        if tau == 0:
            log_f = -mpmath.fsum(q * mpmath.log(q) for q in p)
        else:
            log_f = mpmath.log(mpmath.fsum(q ** (1 - mpmath.mpf(tau)) for q in p)) / tau
        if normalize:
            log_f -= mpmath.log(len(p))
        return float(log_f)


def mp_log_fairness_of_margins(margins, tau, temperature=1.0):
    """Reference via x = sigmoid(m / T) in 50 digits (no underflow for margins of scale 100)."""
    with mpmath.workdps(50):
        x = [1 / (1 + mpmath.exp(-mpmath.mpf(float(m)) / temperature)) for m in margins]
        total = mpmath.fsum(x)
        log_f = mpmath.log(mpmath.fsum((v / total) ** (1 - mpmath.mpf(tau)) for v in x)) / tau
        return float(log_f - mpmath.log(len(x)))


def random_allocation(n, seed, dtype=torch.float32, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.sigmoid(torch.randn(n, generator=g, dtype=torch.float64) * scale).to(dtype)


positive_lists = st.lists(st.floats(0.01, 100.0, allow_nan=False), min_size=2, max_size=40)
tau_values = st.sampled_from(TAUS + [0.0, -1e-7, 1e-7])


# ------------------------------------------------------------------------------------------ references
@pytest.mark.parametrize("tau", TAUS + [0.0])
@pytest.mark.parametrize("n", [2, 8, 32, 4096])
def test_float32_matches_float64_reference(tau, n):
    x = random_allocation(n, seed=n)
    got = log_fairness(x, tau)
    assert got.dtype == torch.float32
    ref = mp_log_fairness(x.tolist(), tau)  # 50 digits for every n (4096 values: about 0.1 s per tau)
    assert math.isclose(math.exp(got.item()), math.exp(ref), rel_tol=1e-5)
    assert math.isclose(fairness(x, tau).item(), fairness_sign(tau) * math.exp(ref), rel_tol=1e-5)


@pytest.mark.parametrize("tau", TAUS + [1e-4, -1e-4, 0.05, -0.05])
def test_float64_matches_50_digit_reference(tau):
    x = random_allocation(32, seed=1, dtype=torch.float64)
    assert log_fairness(x, tau).item() == pytest.approx(mp_log_fairness(x.tolist(), tau), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("n", [8, 32])
def test_equals_authors_direct_formula_where_finite(tau, n):
    margins = torch.randn(n, generator=torch.Generator().manual_seed(7)) * 2
    x = torch.sigmoid(margins)
    direct32 = direct_fairness(x, tau)
    direct64 = direct_fairness(x.double(), tau)
    assert torch.isfinite(direct32) and torch.isfinite(direct64)
    ours = fairness_of_margins(margins, tau)
    assert ours.item() == pytest.approx(direct64.item(), rel=1e-5)
    assert ours.item() == pytest.approx(direct32.item(), rel=1e-5)
    assert fairness(x, tau).item() == pytest.approx(direct64.item(), rel=1e-5)


def test_normalize_false_is_n_times_normalized():
    x = random_allocation(16, seed=3)
    for tau in TAUS:
        assert fairness(x, tau, normalize=False).item() == pytest.approx(16 * fairness(x, tau).item(), rel=1e-6)
        assert direct_fairness(x.double(), tau, normalize=False).item() == pytest.approx(
            fairness(x.double(), tau, normalize=False).item(), rel=1e-10
        )


def test_any_shape_is_flattened():
    x = random_allocation(12, seed=4)
    assert log_fairness(x.view(3, 4), -1.0).item() == log_fairness(x, -1.0).item()
    assert log_fairness_of_margins(x.view(6, 2, 1), 2.0).item() == log_fairness_of_margins(x, 2.0).item()


# ------------------------------------------------------------------------------------------ special cases
@given(positive_lists)
@FAST
def test_tau_minus_one_is_jain_index(values):
    x = torch.tensor(values, dtype=torch.float64)
    assert fairness(x, -1.0).item() == pytest.approx(jain_index(x), rel=1e-12)


@pytest.mark.parametrize("n", [2, 32])
def test_tau_zero_is_exp_shannon_and_limit_is_smooth(n):
    x = random_allocation(n, seed=5, dtype=torch.float64)
    p = x / x.sum()
    shannon = -(p * p.log()).sum().item()
    assert log_fairness(x, 0.0, normalize=False).item() == pytest.approx(shannon, rel=1e-13)
    # approaching 0 from both sides, on both sides of the internal switch to the series, agrees with the reference
    for tau in [-0.2, -0.1, -0.09, -1e-3, -1e-7, -1.1e-8, -9e-9, 1e-12, 9e-9, 1.1e-8, 1e-7, 1e-3, 0.09, 0.1, 0.2]:
        got = log_fairness(x, tau).item()
        assert got == pytest.approx(mp_log_fairness(x.tolist(), tau), rel=1e-13, abs=1e-14), tau
    # and in float32 the values stay finite and within float32 accuracy
    x32 = x.float()
    for tau in [-1e-6, 0.0, 1e-6]:
        assert math.exp(log_fairness(x32, tau).item()) == pytest.approx(math.exp(shannon) / n, rel=2e-5)


def test_extreme_tau_limits():
    x = torch.tensor([0.2, 0.5, 0.9, 0.4], dtype=torch.float64)
    n = x.numel()
    # tau -> -inf: f/n -> mean / max
    assert fairness(x, -2000.0).item() == pytest.approx((x.mean() / x.max()).item(), rel=2e-3)
    # tau -> +inf: f/n -> -1 / (n * min p)
    p_min = (x / x.sum()).min().item()
    assert fairness(x, 2000.0).item() == pytest.approx(-1.0 / (n * p_min), rel=2e-3)


def test_sign_and_ranges():
    x = random_allocation(10, seed=6)
    assert fairness_sign(-1.0) == 1.0 and fairness_sign(0.999) == 1.0 and fairness_sign(1.001) == -1.0
    for tau in TAUS:
        f = fairness(x, tau).item()
        if tau < 1:
            assert 1.0 / 10 <= f <= 1.0 + 1e-7
        else:
            assert f < 0
    equal = torch.full((10,), 0.3)
    assert fairness(equal, -1.0).item() == pytest.approx(1.0, rel=1e-6)
    assert fairness(equal, 2.0).item() == pytest.approx(-1.0, rel=1e-6)


# ------------------------------------------------------------------------------------------ properties
@given(positive_lists, tau_values, st.randoms(use_true_random=False))
@FAST
def test_permutation_invariance(values, tau, rnd):
    shuffled = list(values)
    rnd.shuffle(shuffled)
    a = log_fairness(torch.tensor(values, dtype=torch.float64), tau).item()
    b = log_fairness(torch.tensor(shuffled, dtype=torch.float64), tau).item()
    assert a == pytest.approx(b, rel=1e-12, abs=1e-12)


@given(positive_lists, tau_values, st.floats(1e-3, 1e3))
@FAST
def test_scale_invariance(values, tau, scale):
    x = torch.tensor(values, dtype=torch.float64)
    assert log_fairness(x * scale, tau).item() == pytest.approx(log_fairness(x, tau).item(), rel=1e-10, abs=1e-10)


@given(positive_lists, tau_values, st.data())
@FAST
def test_transfer_from_richer_to_poorer_never_lowers_fairness(values, tau, data):
    x = torch.tensor(values, dtype=torch.float64)
    i, j = data.draw(st.tuples(st.integers(0, len(values) - 1), st.integers(0, len(values) - 1)))
    rich, poor = (i, j) if x[i] >= x[j] else (j, i)
    share = data.draw(st.floats(0.0, 0.5))  # move up to half the gap: the order is preserved (Pigou-Dalton)
    delta = share * (x[rich] - x[poor])
    y = x.clone()
    y[rich] -= delta
    y[poor] += delta
    assert fairness(y, tau).item() >= fairness(x, tau).item() - 1e-9 * abs(fairness(x, tau).item())


@given(positive_lists)
@FAST
def test_normalized_fairness_bounds_for_tau_below_one(values):
    x = torch.tensor(values, dtype=torch.float64)
    n = len(values)
    for tau in [-3.0, -1.0, 0.0, 0.5]:
        f = fairness(x, tau).item()
        assert 1.0 / n - 1e-12 <= f <= 1.0 + 1e-12


# ------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("tau", [-2.0, -1.0, -3e-9, 1e-3, 0.0, 0.5, 2.0, 5.0])
def test_gradcheck_float64(tau):
    x = random_allocation(7, seed=8, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: log_fairness(v, tau), (x,))
    assert torch.autograd.gradcheck(lambda v: fairness(v, tau), (x,))
    m = (torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) * 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: log_fairness_of_margins(v, tau, temperature=0.7), (m,))
    assert torch.autograd.gradcheck(lambda v: fairness_of_margins(v, tau, temperature=2.0), (m,))


def test_jain_gradient_pushes_up_items_below_sum_sq_over_sum():
    """Fairness-math note: dF/dx_k > 0 exactly for x_k < sum(x^2)/sum(x) (Jain case), so FR raises low margins."""
    margins = torch.tensor([-3.0, -1.0, -0.2, 0.4, 1.5, 4.0], dtype=torch.float64, requires_grad=True)
    x = torch.sigmoid(margins)
    threshold = ((x**2).sum() / x.sum()).item()
    fairness_of_margins(margins, tau=-1.0).backward()
    below = x.detach() < threshold
    assert below.any() and (~below).any()
    assert (margins.grad[below] > 0).all()
    assert (margins.grad[~below] < 0).all()
    # the FR loss term -alpha * F therefore has a negative gradient (descent raises) for the low-margin pairs
    assert (margins.grad[below] * -0.1 < 0).all()


def test_float32_gradient_matches_float64():
    m64 = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(10)) * 2
    grads = []
    for dtype in (torch.float32, torch.float64):
        m = m64.to(dtype).requires_grad_()
        fairness_of_margins(m, -1.0).backward()
        assert m.grad.dtype == dtype
        grads.append(m.grad.double())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------------------------------ single item
@pytest.mark.parametrize("tau", [-1.0, 0.0, 0.5, 2.0])
def test_single_item_is_constant_with_zero_gradient(tau):
    m = torch.tensor([0.7], requires_grad=True)
    f = fairness_of_margins(m, tau)
    assert f.item() == fairness_sign(tau)
    f.backward()
    assert m.grad.item() == 0.0
    x = torch.tensor([[0.3]], requires_grad=True)
    fairness(x, tau).backward()
    assert x.grad.item() == 0.0


def test_two_items_have_a_gradient():
    m = torch.tensor([0.7, -0.4], requires_grad=True)
    fairness_of_margins(m).backward()
    assert (m.grad.abs() > 0).all()


# ------------------------------------------------------------------------------------------ overflow
@pytest.mark.parametrize("scale,tau", [(10.0, 5.0), (30.0, 2.0), (30.0, 5.0), (100.0, 2.0), (100.0, 5.0)])
def test_log_fairness_finite_where_direct_overflows(scale, tau):
    margins = torch.randn(4096, generator=torch.Generator().manual_seed(11)) * scale
    x32 = torch.sigmoid(margins)
    for dtype in (torch.float32, torch.bfloat16):
        assert not torch.isfinite(direct_fairness(x32.to(dtype), tau)), "direct form should overflow here"
    got = log_fairness_of_margins(margins, tau)
    assert torch.isfinite(got) and got.dtype == torch.float32
    assert got.item() == pytest.approx(mp_log_fairness_of_margins(margins.tolist(), tau), rel=1e-5)
    m = margins.clone().requires_grad_()
    log_fairness_of_margins(m, tau).backward()
    assert torch.isfinite(m.grad).all()


def test_large_batch_equals_direct_formula_where_it_is_finite():
    margins = torch.randn(4096, generator=torch.Generator().manual_seed(11)) * 10
    direct32 = direct_fairness(torch.sigmoid(margins), 2.0)
    assert torch.isfinite(direct32) and direct32.item() < -1e5
    assert fairness_of_margins(margins, 2.0).item() == pytest.approx(direct32.item(), rel=1e-5)
    assert fairness_of_margins(margins, 5.0).item() == pytest.approx(
        direct_fairness(torch.sigmoid(margins.double()), 5.0).item(), rel=1e-5
    )


def test_very_negative_margins_do_not_underflow():
    margins = torch.tensor([-500.0, -200.0, 0.0, 3.0])
    got = log_fairness_of_margins(margins, -1.0)
    assert got.item() == pytest.approx(mp_log_fairness_of_margins(margins.tolist(), -1.0), rel=1e-6)
    # the allocation itself underflows in float32, and log_fairness says so instead of returning NaN
    with pytest.raises(FairnessInputError, match="strictly positive"):
        log_fairness(torch.sigmoid(margins), -1.0)


def test_value_beyond_float32_has_a_finite_log_and_is_finite_in_float64():
    margins = torch.tensor([-300.0, -120.0, 0.5, 2.0, 7.0])
    tau = 5.0
    log_f = log_fairness_of_margins(margins, tau)
    assert torch.isfinite(log_f) and log_f.item() > math.log(torch.finfo(torch.float32).max)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f64 = fairness_of_margins(margins.double(), tau)
    assert f64.item() == pytest.approx(-math.exp(mp_log_fairness_of_margins(margins.tolist(), tau)), rel=1e-10)


def test_huge_but_representable_value_stays_finite_in_float32():
    margins = torch.tensor([-60.0, 0.0, 1.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = fairness_of_margins(margins, 2.0)
    ref = -math.exp(mp_log_fairness_of_margins(margins.tolist(), 2.0))
    assert ref < -1e11 and f.item() == pytest.approx(ref, rel=1e-5)


# ------------------------------------------------------------------------------------------ dtypes / devices
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_low_precision_input_is_upcast(low):
    margins = (torch.randn(64, generator=torch.Generator().manual_seed(12)) * 3).to(low).requires_grad_()
    for tau in [-1.0, 0.0, 2.0]:
        got = log_fairness_of_margins(margins, tau)
        assert got.dtype == torch.float32
        ref = log_fairness_of_margins(margins.detach().double(), tau).item()  # same bf16 values, exact math
        assert got.item() == pytest.approx(ref, rel=1e-6, abs=1e-7)
    fairness_of_margins(margins, -1.0).backward()
    assert margins.grad.dtype == low and torch.isfinite(margins.grad.float()).all()
    x = torch.sigmoid(margins.detach())
    for tau in [-1.0, 0.0, 2.0]:
        got = fairness(x, tau)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(fairness(x.double(), tau).item(), rel=1e-6)


def test_output_dtypes():
    x = torch.tensor([1.0, 2.0, 3.0])
    assert log_fairness(x).dtype == torch.float32
    assert fairness(x.double()).dtype == torch.float64
    assert fairness([1, 2, 3]).dtype == torch.float32  # integers and lists are accepted as allocations
    assert log_fairness(x).shape == ()


@pytest.mark.parametrize("device", DEVICES)
def test_device_path(device):
    """On each device: values against the 50-digit reference, gradients against float64 autograd of the direct
    power formula (the test oracle in fair_reference), Jain at tau = -1 against its closed form."""
    margins = torch.randn(256, generator=torch.Generator().manual_seed(13)) * 4
    m = margins.clone().to(device).requires_grad_()
    for tau in [-1.0, 0.0, 0.5, 5.0]:
        got = log_fairness_of_margins(m, tau)
        assert got.device.type == device
        ref = mp_log_fairness(torch.sigmoid(margins.double()).tolist(), tau)
        assert got.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    for tau in [-1.0, 0.5, 2.0]:
        m.grad = None
        fairness_of_margins(m, tau).backward()
        ref = margins.double().requires_grad_()
        direct_fairness(torch.sigmoid(ref), tau).backward()
        assert m.grad.device.type == device
        torch.testing.assert_close(m.grad.cpu().double(), ref.grad, rtol=1e-4, atol=1e-7)
    m.grad = None
    fairness_of_margins(m.to(torch.bfloat16), -1.0).backward()
    assert m.grad.device.type == device and torch.isfinite(m.grad).all()
    x = torch.sigmoid(margins.double())
    jain = float(x.sum() ** 2 / (x.numel() * (x**2).sum()))
    assert fairness(torch.sigmoid(m.detach()), -1.0).item() == pytest.approx(jain, rel=1e-6)


# ------------------------------------------------------------------------------------------ bad inputs
def test_nan_is_rejected():
    with pytest.raises(FairnessInputError, match="NaN/Inf"):
        log_fairness(torch.tensor([0.5, float("nan")]))


def test_inf_is_rejected():
    with pytest.raises(FairnessInputError, match="NaN/Inf"):
        fairness(torch.tensor([0.5, float("inf")]))


def test_nan_margin_is_rejected():
    with pytest.raises(FairnessInputError, match="margins contains 1 NaN/Inf"):
        log_fairness_of_margins(torch.tensor([0.5, float("nan"), 1.0]))


def test_inf_margin_is_rejected():
    with pytest.raises(FairnessInputError, match="NaN/Inf"):
        log_fairness_of_margins(torch.tensor([-float("inf"), 1.0]))


def test_empty_is_rejected():
    with pytest.raises(FairnessInputError, match="empty"):
        fairness(torch.tensor([]))
    with pytest.raises(FairnessInputError, match="empty"):
        log_fairness_of_margins(torch.zeros(0, 3))


def test_zero_allocation_is_rejected():
    with pytest.raises(FairnessInputError, match="strictly positive"):
        log_fairness(torch.tensor([0.0, 1.0]))


def test_negative_allocation_is_rejected():
    with pytest.raises(FairnessInputError, match="strictly positive"):
        fairness(torch.tensor([0.5, -0.1, 1.0]), tau=0.5)


@pytest.mark.parametrize("fn", [log_fairness, fairness, log_fairness_of_margins, fairness_of_margins, direct_fairness])
def test_tau_one_is_rejected(fn):
    with pytest.raises(FairnessInputError, match="tau = 1"):
        fn(torch.tensor([0.2, 0.4]), 1.0)
    with pytest.raises(FairnessInputError, match="tau = 1"):
        fairness_sign(1.0)


@pytest.mark.parametrize("tau", [float("nan"), float("inf")])
def test_non_finite_tau_is_rejected(tau):
    with pytest.raises(FairnessInputError, match="tau must be finite"):
        log_fairness(torch.tensor([0.2, 0.4]), tau)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_is_rejected(temperature):
    with pytest.raises(FairnessInputError, match="temperature"):
        log_fairness_of_margins(torch.tensor([0.2, 0.4]), temperature=temperature)


def test_direct_formula_has_no_tau_zero():
    with pytest.raises(FairnessInputError, match="tau = 0"):
        direct_fairness(torch.tensor([0.2, 0.4]), 0.0)


def test_complex_is_rejected():
    with pytest.raises(FairnessInputError, match="real"):
        fairness(torch.tensor([1 + 1j, 2 + 0j]))


def test_error_is_a_value_error():
    assert issubclass(FairnessInputError, ValueError)
