"""FairPairWiseLoss against a float64 reference of the paper's formulas, and the gradient direction of each form."""

import math
import os
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from openrlhf_fair.errors import FairnessConfigError, FairnessTrainingError
from openrlhf_fair.settings import RewardFairnessConfig
from openrlhf_fair.core.losses import FairPairWiseLoss


# Stand-ins with the exact formulas of OpenRLHF 0.11.2's PairWiseLoss / LogExpLoss (openrlhf/models/loss.py);
# test_fair_rm_patch.py runs the real classes.
def pairwise_loss(chosen, reject, margin=None):
    return -F.logsigmoid(chosen - reject - (margin if margin is not None else 0)).mean()


def logexp_loss(chosen, reject, margin=None):
    return torch.log(1 + torch.exp(reject - chosen)).mean()


def reference_F(margins, tau, temperature=1.0, group_ids=None):
    """Lan et al.'s f_tau / n over x = sigmoid(m / T), by the direct power formula in float64."""
    x = torch.sigmoid(margins.double() / temperature)
    if group_ids is not None:
        x = torch.stack([x[group_ids == g].mean() for g in sorted(set(group_ids.tolist()))])
    p = x / x.sum()
    sign = 1.0 if tau < 1 else -1.0
    return sign * (p ** (1 - tau)).sum() ** (1 / tau) / x.numel()


def reference_loss(base, margins, config, group_ids=None):
    f = reference_F(margins, config.tau, config.temperature, group_ids)
    if config.method == "fr":
        return base - config.reg * f
    exponent = config.coef if config.coef_form == "paper" else -config.coef
    return base * f**exponent


def batch(n=8, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randn(n, generator=g, dtype=torch.float64) * scale + 0.3
    reject = torch.randn(n, generator=g, dtype=torch.float64) * scale
    margin = torch.rand(n, generator=g, dtype=torch.float64)
    return chosen, reject, margin


CONFIGS = [
    RewardFairnessConfig(reg=0.1),
    RewardFairnessConfig(reg=1.0, tau=-2.0, temperature=2.0),
    RewardFairnessConfig(reg=0.5, tau=0.5),
    RewardFairnessConfig(reg=0.3, tau=2.0),
    RewardFairnessConfig(coef=0.5),
    RewardFairnessConfig(coef=0.5, coef_form="inverse", tau=0.3, temperature=0.5),
    RewardFairnessConfig(coef=2.0, tau=-1.0),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.describe()[:60])
@pytest.mark.parametrize("base_loss", [pairwise_loss, logexp_loss], ids=["PairWiseLoss", "LogExpLoss"])
@pytest.mark.parametrize("with_margin", [False, True])
def test_loss_matches_float64_reference(config, base_loss, with_margin):
    chosen, reject, margin = batch()
    margin = margin if with_margin else None
    loss = FairPairWiseLoss(base_loss, config)(chosen, reject, margin)
    expected = reference_loss(base_loss(chosen, reject, margin), chosen - reject, config)
    assert loss.dtype == torch.float64
    assert float(loss) == pytest.approx(float(expected), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[4], CONFIGS[5]], ids=["fr", "fc", "fc-inverse"])
def test_gradient_matches_reference(config):
    chosen, reject, _ = batch(seed=3)
    c1, r1 = chosen.clone().requires_grad_(), reject.clone().requires_grad_()
    FairPairWiseLoss(pairwise_loss, config)(c1, r1).backward()
    c2, r2 = chosen.clone().requires_grad_(), reject.clone().requires_grad_()
    reference_loss(pairwise_loss(c2, r2), c2 - r2, config).backward()
    torch.testing.assert_close(c1.grad, c2.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(r1.grad, r2.grad, rtol=1e-9, atol=1e-12)


def test_group_mode_uses_group_mean_allocations():
    chosen, reject, _ = batch(n=10, seed=5)
    ids = torch.tensor([0, 0, 0, 2, 2, 5, 5, 5, 5, 2])
    config = RewardFairnessConfig(reg=0.7, tau=-1.5, group_key="category")
    loss = FairPairWiseLoss(pairwise_loss, config)
    out = loss(chosen, reject, group_ids=ids)
    expected = reference_loss(pairwise_loss(chosen, reject), chosen - reject, config, group_ids=ids)
    assert float(out) == pytest.approx(float(expected), rel=1e-10)
    assert loss.last_metrics["fairness/items"] == 3.0
    # ids from the host batch through batch_inputs (how the host trainer delivers them) give the same value
    extras = type("Extras", (list,), {})([0.0] * 10)
    extras.group_ids = ids.tolist()
    inputs = loss.batch_inputs((None, None, None, None, extras), step=7)
    assert inputs["step"] == 7
    assert float(loss(chosen, reject, **inputs)) == pytest.approx(float(out), rel=1e-12)
    # per-pair F differs from per-group F on this batch: the ids are really used
    per_pair = reference_loss(pairwise_loss(chosen, reject), chosen - reject, config)
    assert abs(float(per_pair) - float(out)) > 1e-4


def test_group_mode_without_ids_is_an_error():
    chosen, reject, _ = batch()
    loss = FairPairWiseLoss(pairwise_loss, RewardFairnessConfig(reg=0.1, group_key="category"))
    with pytest.raises(FairnessTrainingError, match="no group labels"):
        loss(chosen, reject)


def step_fairness(config, lr=0.5):
    """F of the margins after one gradient step of `config`'s loss, and after the matching step of the base
    loss alone (FR: base; FC: base scaled by the same factor F**exponent), on a fixed batch of margins."""
    chosen, reject, _ = batch(n=16, seed=11, scale=2.0)
    margins = (chosen - reject).requires_grad_()
    zeros = torch.zeros_like(margins)
    FairPairWiseLoss(pairwise_loss, config)(margins, zeros).backward()
    stepped = margins.detach() - lr * margins.grad

    base_margins = (chosen - reject).requires_grad_()
    f0 = float(reference_F(base_margins.detach(), config.tau, config.temperature))
    scale = 1.0
    if config.method == "fc":
        scale = f0 ** (config.coef if config.coef_form == "paper" else -config.coef)
    (scale * pairwise_loss(base_margins, zeros)).backward()
    base_stepped = base_margins.detach() - lr * base_margins.grad
    return float(reference_F(stepped, config.tau)), float(reference_F(base_stepped, config.tau))


@pytest.mark.parametrize(
    "config, raises",
    [
        (RewardFairnessConfig(reg=1.0), True),
        (RewardFairnessConfig(reg=1.0, tau=0.5), True),
        (RewardFairnessConfig(coef=0.5, coef_form="inverse"), True),
        (RewardFairnessConfig(coef=0.5), False),
        (RewardFairnessConfig(coef=0.5, tau=-3.0), False),
    ],
    ids=["fr", "fr-tau0.5", "fc-inverse", "fc-paper", "fc-paper-tau-3"],
)
def test_gradient_direction_of_each_form(config, raises):
    """FR and inverse FC raise F relative to the base loss's own step; the published FC lowers it."""
    after, base_after = step_fairness(config)
    if raises:
        assert after > base_after + 1e-6
    else:
        assert after < base_after - 1e-6


def test_float32_and_bfloat16_rewards_keep_the_host_dtype():
    chosen, reject, _ = batch()
    config = RewardFairnessConfig(reg=0.1)
    expected = float(reference_loss(pairwise_loss(chosen, reject), chosen - reject, config))
    for dtype, rel in ((torch.float32, 1e-6), (torch.bfloat16, 2e-2)):
        c = chosen.to(dtype).requires_grad_()
        loss = FairPairWiseLoss(pairwise_loss, config)(c, reject.to(dtype))
        assert loss.dtype == dtype
        assert float(loss.detach()) == pytest.approx(expected, rel=rel)
        loss.backward()
        assert c.grad.dtype == dtype and torch.isfinite(c.grad).all()


def test_metrics_of_the_last_step_and_window_means():
    chosen, reject, _ = batch()
    loss = FairPairWiseLoss(pairwise_loss, RewardFairnessConfig(reg=0.1), steps_per_update=2)
    loss(chosen, reject)
    first = dict(loss.last_metrics)
    x = torch.sigmoid(chosen - reject)
    assert first["fairness/jain"] == pytest.approx(float(x.sum() ** 2 / (x.numel() * (x**2).sum())), rel=1e-9)
    assert first["fairness/F"] == pytest.approx(first["fairness/jain"], rel=1e-9)  # tau = -1: F is Jain's index
    assert first["fairness/term"] == pytest.approx(0.1 * first["fairness/F"], rel=1e-9)
    assert first["fairness/base_loss"] == pytest.approx(float(pairwise_loss(chosen, reject)), rel=1e-9)
    assert 0 <= first["fairness/gini"] < 1 and first["fairness/items"] == 8
    loss(chosen * 3, reject)
    window = loss.extra_logs()  # the optimizer step's two micro-batches
    assert window["fairness/F"] == pytest.approx((first["fairness/F"] + loss.last_metrics["fairness/F"]) / 2)
    loss(chosen * 2, reject)  # the next optimizer step starts a new mean
    assert loss.extra_logs() == loss.last_metrics


def test_metrics_only_mode_returns_the_host_loss_exactly():
    chosen, reject, _ = batch()
    c = chosen.clone().requires_grad_()
    loss = FairPairWiseLoss(pairwise_loss, RewardFairnessConfig(group_key="category"))
    out = loss(c, reject, group_ids=torch.tensor([0, 1] * 4))
    assert torch.equal(out, pairwise_loss(chosen, reject))
    assert loss.last_metrics["fairness/term"] == 0 and loss.last_metrics["fairness/items"] == 2


def test_nan_margin_stops_naming_the_step():
    chosen, reject, _ = batch()
    loss = FairPairWiseLoss(pairwise_loss, RewardFairnessConfig(reg=0.1), steps_per_update=4)
    for _ in range(5):
        loss(chosen, reject)
    chosen[2] = math.nan
    with pytest.raises(FairnessTrainingError, match=r"training step 2 \(micro-step 6\)"):
        loss(chosen, reject)


def test_single_pair_warns_once_and_has_no_fairness_gradient():
    loss = FairPairWiseLoss(pairwise_loss, RewardFairnessConfig(reg=5.0))
    c = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="at least 2"):
        out = loss(c, torch.tensor([0.0], dtype=torch.float64))
    out.backward()
    c_ref = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    pairwise_loss(c_ref, torch.tensor([0.0], dtype=torch.float64)).backward()
    torch.testing.assert_close(c.grad, c_ref.grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(torch.tensor([0.1]), torch.tensor([0.0]))  # no second warning


def test_eval_recording_returns_host_loss_and_keeps_rewards():
    chosen, reject, _ = batch()
    loss = FairPairWiseLoss(pairwise_loss, RewardFairnessConfig(reg=0.1))
    with torch.no_grad():  # the host's evaluation
        out = loss(chosen, reject, group_ids=torch.arange(8) % 2)
    assert torch.equal(out, pairwise_loss(chosen, reject))
    assert loss.extra_logs() == {} and loss.last_metrics == {}
    records = loss.eval_logs(group_names=["a", "b"])
    x = torch.sigmoid(chosen.float().double() - reject.float().double())
    assert records["fairness/jain"] == pytest.approx(float(x.sum() ** 2 / (8 * (x**2).sum())), rel=1e-6)
    assert records["fairness/acc/a"] == float((chosen > reject)[::2].double().mean())
    assert loss.eval_logs() == {}  # the kept pairs were consumed
    assert float(loss(chosen, reject)) != float(out)  # a training call: the fairness term is back


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(reg=0.1, tau=1.0), "degenerate"),
        (dict(reg=-0.1), "--fairness_reg must be >= 0"),
        (dict(coef=-0.5), "--fairness_coef must be >= 0"),
        (dict(reg=0.1, coef=0.5), "only one"),
        (dict(coef=0.5, tau=2.0), "tau < 1"),
        (dict(reg=0.1, temperature=0.0), "temperature"),
        (dict(reg=0.1, scope="world"), "scope"),
        (dict(reg=0.1, coef_form="inverse"), "only applies"),
        (dict(reg=float("nan")), "finite"),
        (dict(reg=0.1, group_key=" "), "group_key"),
    ],
)
def test_config_rejects_bad_settings(kwargs, message):
    with pytest.raises(FairnessConfigError, match=message):
        RewardFairnessConfig(**kwargs)


# ----------------------------------------------------------------------------------------------- global scope
GLOBAL_CONFIGS = {
    "fr": RewardFairnessConfig(reg=0.8, scope="global"),
    "fc": RewardFairnessConfig(coef=0.5, scope="global"),
    "fr-groups": RewardFairnessConfig(reg=0.8, scope="global", group_key="category"),
}


def _global_scope_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        chosen, reject, _ = batch(n=8, seed=21)
        ids = torch.arange(8) % 3
        rows = slice(rank * 4, rank * 4 + 4)
        for name, config in GLOBAL_CONFIGS.items():
            c = chosen[rows].clone().requires_grad_()
            loss = FairPairWiseLoss(pairwise_loss, config)
            out = loss(c, reject[rows], group_ids=ids[rows] if config.group_key else None)
            out.backward()
            torch.save({"grad": c.grad, "items": loss.last_metrics["fairness/items"]}, f"{out_dir}/{name}-{rank}.pt")
    finally:
        dist.destroy_process_group()
    # Results are saved: leave without the C++ exit-time teardown, where gloo's threads made a rank die with
    # SIGABRT ("terminate called without an active exception") in about 1 run in 10, after destroy_process_group.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def global_scope_results(tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("global_scope")
    mp.spawn(_global_scope_worker, args=(2, str(out / "init"), str(out)), nprocs=2)
    return out


@pytest.mark.parametrize("name", list(GLOBAL_CONFIGS))
def test_global_scope_gathers_margins_with_gradients(global_scope_results, name):
    """Two gloo ranks with 4 pairs each: after data-parallel averaging (grad / world) each rank's gradient equals
    the single-process gradient of the loss over all 8 pairs; without gathering it would not."""
    config, world = GLOBAL_CONFIGS[name], 2
    chosen, reject, _ = batch(n=8, seed=21)
    c = chosen.clone().requires_grad_()
    ids = torch.arange(8) % 3 if config.group_key else None
    micro = RewardFairnessConfig(**{**config.__dict__, "scope": "micro"})
    FairPairWiseLoss(pairwise_loss, micro)(c, reject, group_ids=ids).backward()
    results = [torch.load(global_scope_results / f"{name}-{rank}.pt") for rank in range(world)]
    torch.testing.assert_close(torch.cat([r["grad"] for r in results]) / world, c.grad, rtol=1e-9, atol=1e-12)
    assert [r["items"] for r in results] == [3.0 if config.group_key else 8.0] * world
