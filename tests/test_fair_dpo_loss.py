"""FairDPOLoss around OpenRLHF's real DPOLoss against a float64 reference of the paper's formulas over DPO's
implicit-reward margins m = beta * [(log pi - log pi_ref)(chosen) - (log pi - log pi_ref)(rejected)]."""

import pytest
import torch
import torch.nn.functional as F

from openrlhf_fair.settings import RewardFairnessConfig
from openrlhf_fair.core.dpo_losses import FairDPOLoss


@pytest.fixture(scope="module")
def DPOLoss():
    """The host's DPOLoss (openrlhf.models imports flash_attn at module top: use the CPU backend's stand-in)."""
    from openrlhf_fair.cpu_backend import stand_ins

    installed = stand_ins.install("flash_attn")
    try:
        from openrlhf.models.loss import DPOLoss

        yield DPOLoss
    finally:
        if installed:
            stand_ins.uninstall("flash_attn")


def reference_dpo(pc, pr, rc, rr, beta, label_smoothing=0.0, ipo=False):
    """DPO (Rafailov et al. eq. 7), cDPO label smoothing and IPO, in float64."""
    logits = (pc - pr) - (rc - rr)
    if ipo:
        return ((logits - 1 / (2 * beta)) ** 2).mean()
    smoothed = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    return smoothed.mean()


def reference_F(margins, tau, temperature=1.0):
    """Lan et al.'s f_tau / n over x = sigmoid(m / T), by the direct power formula in float64."""
    x = torch.sigmoid(margins / temperature)
    p = x / x.sum()
    sign = 1.0 if tau < 1 else -1.0
    return sign * (p ** (1 - tau)).sum() ** (1 / tau) / x.numel()


def reference_loss(pc, pr, rc, rr, beta, config, **dpo):
    base = reference_dpo(pc, pr, rc, rr, beta, **dpo)
    f = reference_F(beta * ((pc - rc) - (pr - rr)), config.tau, config.temperature)
    if config.method == "fr":
        return base - config.reg * f
    exponent = config.coef if config.coef_form == "paper" else -config.coef
    return base * f**exponent


def logps(n=8, seed=0):
    """Sequence log-probabilities of policy and reference for n pairs (sums over tokens: tens of nats)."""
    g = torch.Generator().manual_seed(seed)
    def noise(scale):
        return scale * torch.randn(n, generator=g, dtype=torch.float64)

    pc, pr = -40 + noise(5), -45 + noise(5)
    rc, rr = pc + noise(3), pr + noise(3)
    return pc, pr, rc, rr


CONFIGS = [
    RewardFairnessConfig(reg=0.1),
    RewardFairnessConfig(reg=1.0, tau=-2.0, temperature=2.0),
    RewardFairnessConfig(reg=0.3, tau=2.0),
    RewardFairnessConfig(coef=0.5),
    RewardFairnessConfig(coef=0.5, coef_form="inverse", tau=0.3, temperature=0.5),
]
HOST_FORMS = [dict(), dict(label_smoothing=0.1), dict(ipo=True)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.describe()[:50])
@pytest.mark.parametrize("dpo", HOST_FORMS, ids=["dpo", "cdpo", "ipo"])
def test_loss_and_gradient_match_float64_reference(DPOLoss, config, dpo):
    beta = 0.1
    pc, pr, rc, rr = logps()
    host = DPOLoss(beta, dpo.get("label_smoothing", 0.0), dpo.get("ipo", False))
    p1 = [t.clone().requires_grad_() for t in (pc, pr)]
    loss, chosen_rewards, rejected_rewards = FairDPOLoss(host, config)(*p1, rc, rr)
    loss.backward()
    p2 = [t.clone().requires_grad_() for t in (pc, pr)]
    expected = reference_loss(*p2, rc, rr, beta, config, **dpo)
    expected.backward()

    assert loss.dtype == torch.float64
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-10, abs=1e-12)
    for got, want in zip(p1, p2):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-9, atol=1e-12)
    # The rewards the host logs are its own, untouched.
    _, host_chosen, host_rejected = host(pc, pr, rc, rr)
    assert torch.equal(chosen_rewards, host_chosen) and torch.equal(rejected_rewards, host_rejected)


def test_metrics_are_over_the_implicit_reward_margins(DPOLoss):
    beta, config = 0.2, RewardFairnessConfig(reg=0.1)
    pc, pr, rc, rr = logps(seed=1)
    loss_fn = FairDPOLoss(DPOLoss(beta), config)
    loss_fn(pc.requires_grad_(), pr.requires_grad_(), rc, rr)
    m = beta * ((pc - rc) - (pr - rr)).detach()
    x = torch.sigmoid(m)
    assert loss_fn.extra_logs()["fairness/F"] == pytest.approx(float(reference_F(m, -1.0)), rel=1e-12)
    logs = loss_fn.extra_logs()
    assert logs["fairness/jain"] == pytest.approx(float(x.sum() ** 2 / (x.numel() * (x**2).sum())), rel=1e-9)
    assert logs["fairness/base_loss"] == pytest.approx(float(reference_dpo(pc, pr, rc, rr, beta)), rel=1e-12)


def test_evaluation_returns_the_host_loss_unchanged(DPOLoss):
    pc, pr, rc, rr = logps(seed=2)
    host = DPOLoss(0.1)
    loss_fn = FairDPOLoss(host, RewardFairnessConfig(coef=0.5))
    with torch.no_grad():
        got = loss_fn(pc, pr, rc, rr)
        want = host(pc, pr, rc, rr)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert loss_fn.extra_logs() == {}  # evaluation records no training metrics


@pytest.mark.parametrize(
    "config, raises_fairness",
    [
        (RewardFairnessConfig(reg=1.0), True),
        (RewardFairnessConfig(coef=0.5, coef_form="inverse"), True),
        (RewardFairnessConfig(coef=0.5), False),  # the published FC form lowers F (fairness-math.md)
    ],
    ids=["fr", "fc-inverse", "fc-paper"],
)
def test_gradient_direction_of_the_fairness_part(DPOLoss, config, raises_fairness):
    """A small step against the gradient of (loss - base) moves F the way each method is known to."""
    beta = 0.1
    pc, pr, rc, rr = logps(seed=4)
    params = [pc.clone().requires_grad_(), pr.clone().requires_grad_()]
    host = DPOLoss(beta)
    loss, _, _ = FairDPOLoss(host, config)(*params, rc, rr)
    (loss - host(*params, rc, rr)[0]).backward()

    def fairness(pc_, pr_):
        return float(reference_F(beta * ((pc_ - rc) - (pr_ - rr)), config.tau))

    before = fairness(pc, pr)
    after = fairness(*(p.detach() - 1.0 * p.grad / p.grad.norm() for p in params))
    assert (after > before) == raises_fairness, (before, after)


def test_reference_logps_get_no_gradient_and_beta_follows_the_host(DPOLoss):
    """beta comes from the host's DPOLoss (0.05 here, not the reference tests' 0.1): the loss and the gradients of
    all four log-probabilities match the float64 reference at beta = 0.05. In training the reference log-probs
    arrive without a graph (OpenRLHF computes them under no_grad), so none of the fairness term's gradient can
    reach the reference model; here they require grad, so their gradient (minus the policy's) is checked too."""
    beta, config = 0.05, RewardFairnessConfig(reg=0.5)
    inputs = logps(seed=5)
    loss_fn = FairDPOLoss(DPOLoss(beta), config)
    assert loss_fn.beta == beta
    got = [t.clone().requires_grad_() for t in inputs]
    loss, _, _ = loss_fn(*got)
    loss.backward()
    want = [t.clone().requires_grad_() for t in inputs]
    expected = reference_loss(*want, beta, config)
    expected.backward()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-10)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.grad, w.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got[2].grad, -got[0].grad)  # d/d ref = -d/d policy: only pi - pi_ref matters
    detached = [t.clone().requires_grad_() for t in inputs[:2]]
    loss_fn(*detached, inputs[2].detach(), inputs[3].detach())[0].backward()  # as the host calls it
    torch.testing.assert_close(detached[0].grad, want[0].grad, rtol=1e-9, atol=1e-12)


def test_eval_recording_keeps_the_implicit_rewards(DPOLoss):
    """Calls without gradients (the host's evaluation) keep the implicit rewards for the eval metrics; the eval loss
    stays DPO's."""
    beta = 0.1
    pc, pr, rc, rr = logps(seed=6)
    host = DPOLoss(beta)
    loss_fn = FairDPOLoss(host, RewardFairnessConfig(reg=0.1))
    with torch.no_grad():
        loss, _, _ = loss_fn(pc, pr, rc, rr)
    records = loss_fn.eval_logs(gather=lambda t: t)
    assert torch.equal(loss, host(pc, pr, rc, rr)[0])
    m = (beta * (pc - rc)).float().double() - (beta * (pr - rr)).float().double()
    x = torch.sigmoid(m)
    assert records["fairness/jain"] == pytest.approx(float(x.sum() ** 2 / (x.numel() * (x**2).sum())), rel=1e-6)
    assert records["fairness/F"] == pytest.approx(float(reference_F(m, -1.0)), rel=1e-6)
    assert loss_fn.extra_logs() == {}
