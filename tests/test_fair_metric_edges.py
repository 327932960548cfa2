"""Edges of the metric and loss helpers that a mutation run (mutmut, docs/development.md) showed no test pinned:
error messages naming their input, one-member and trailing empty groups, label names, normalised group F, the
loss's hook inputs and the step its errors name. Each test says which wrong line it catches."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from openrlhf_fair.core import measures as metrics, reward_terms
from openrlhf_fair.settings import RewardFairnessConfig
from openrlhf_fair.errors import FairnessInputError, FairnessTrainingError
from openrlhf_fair.core.losses import FairPairWiseLoss


@pytest.mark.parametrize("call, name", [
    (lambda bad: metrics.group_means([1.0, math.nan], [0, 1]), "group values"),
    (lambda bad: metrics.pairwise_eval_metrics([math.nan], [0.0], tau=-1.0, temperature=1.0), "chosen rewards"),
    (lambda bad: metrics.pairwise_eval_metrics([1.0], [math.nan], tau=-1.0, temperature=1.0), "rejected rewards"),
], ids=["group_means", "eval_chosen", "eval_rejected"])
def test_bad_input_is_refused_naming_which_input(call, name):
    """A message that names the wrong (or no) input sends the user looking in the wrong place."""
    with pytest.raises(FairnessInputError, match=f"^{name} "):
        call(torch.tensor([1.0, -2.0]))


@pytest.mark.parametrize("ids", [torch.tensor([True, False]), torch.tensor([0.0, 1.0])], ids=["bool", "float"])
def test_group_ids_must_be_integers(ids):
    with pytest.raises(FairnessInputError, match="group_ids must be an integer tensor"):
        metrics.group_means([1.0, 2.0], ids)


def test_small_integer_group_ids_work_like_int64():
    """uint8 ids (what a label table may hold) are read as int64, as index_add_ needs."""
    means, counts = metrics.group_means([1.0, 2.0, 4.0], torch.tensor([0, 1, 1], dtype=torch.uint8))
    assert means.tolist() == [1.0, 3.0] and counts.tolist() == [1, 2]


def test_a_group_of_one_is_a_group():
    """One member is enough for a mean, a worst group, a gap and the eval metrics of that group."""
    means, counts = metrics.group_means([5.0, 1.0, 3.0], [0, 1, 1])
    assert means.tolist() == [5.0, 2.0] and counts.tolist() == [1, 2]
    assert float(metrics.group_gap(means.unsqueeze(0))[0]) == 3.0
    out = metrics.pairwise_eval_metrics([2.0, 1.0, 0.0], [0.0, 0.0, 1.0], tau=-1.0, temperature=1.0,
                                        group_ids=[0, 1, 1], group_names=["solo", "pair"])
    assert out["fairness/margin/solo"] == 2.0 and out["fairness/acc/solo"] == 1.0
    assert out["fairness/margin_gap"] == pytest.approx(2.0)


def test_a_trailing_group_without_pairs_is_left_out():
    """group_names may name more groups than the pairs use (an eval set without the last one)."""
    out = metrics.pairwise_eval_metrics([2.0, 1.0, 0.0, 3.0], [0.0, 0.0, 1.0, 1.0], tau=-1.0, temperature=1.0,
                                        group_ids=[0, 0, 1, 1], group_names=["a", "b", "c"])
    assert out["fairness/reward/a"] == pytest.approx(0.75) and out["fairness/reward/b"] == pytest.approx(1.25)
    assert not any(key.endswith("/c") for key in out)
    assert out["fairness/reward_gap"] == pytest.approx(0.5) and out["fairness/margin_gap"] == pytest.approx(1.0)
    x = torch.sigmoid(torch.tensor([2.0, 1.0, -1.0, 2.0], dtype=torch.float64))
    x_groups = torch.stack([x[:2].mean(), x[2:].mean()])
    jain = float(x_groups.sum() ** 2 / (2 * (x_groups**2).sum()))  # tau = -1: normalised F is Jain's index
    assert out["fairness/F_groups"] == pytest.approx(jain, rel=1e-12)


def test_level_fairness_is_normalised():
    levels = torch.tensor([3.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    log_f, items = reward_terms.level_log_fairness(levels)
    y = torch.sigmoid((levels - levels.mean()) / levels.std(correction=0))  # standardised levels
    assert items == 4
    assert float(log_f.exp()) == pytest.approx(float(y.sum() ** 2 / (4 * (y**2).sum())), rel=1e-12)


def test_labels_keep_their_letters_and_collisions_name_both():
    assert metrics.metric_safe_name("Helpful/Harmless 2") == "Helpful_Harmless_2"
    with pytest.raises(FairnessInputError, match="'help ful' and 'help/ful' both become"):
        metrics.metric_safe_names(["help ful", "help/ful"])


def bt_loss(chosen, reject, margin=None):
    return -F.logsigmoid(chosen - reject - (0 if margin is None else margin)).mean()


def test_a_batch_without_group_labels_is_a_clear_error():
    loss = FairPairWiseLoss(bt_loss, RewardFairnessConfig(reg=0.1, group_key="category"))
    with pytest.raises(FairnessTrainingError, match="carries no group labels"):
        loss.batch_inputs((None, None, None, None, object()), step=1)


def test_the_margin_and_the_step_reach_the_checks():
    """forward passes the host's margin (a NaN there stops the run even where the base loss ignores it) and its
    micro-step (named in the message: with 4 micro-steps per update, micro-step 4 is step 1, micro-step 5 step 2)."""
    loss = FairPairWiseLoss(lambda c, r, m: bt_loss(c, r), RewardFairnessConfig(reg=0.1), steps_per_update=4)
    chosen = torch.tensor([1.0, 2.0], requires_grad=True)
    reject = torch.tensor([0.0, 0.5])
    for step, named in ((4, "step 1 (micro-step 4)"), (5, "step 2 (micro-step 5)")):
        with pytest.raises(FairnessTrainingError, match=rf"at training {re.escape(named)}.*margin"):
            loss(chosen, reject, torch.tensor([0.1, math.nan]), step=step)


def test_eval_pairs_without_group_ids_give_the_metrics_without_groups():
    loss = FairPairWiseLoss(bt_loss, RewardFairnessConfig(reg=0.1))
    with torch.no_grad():
        loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 3.0]))
    out = loss.eval_logs(group_names=["a", "b"])
    assert out["fairness/jain"] > 0 and not any(key.startswith("fairness/acc") for key in out)


class HostDPOLoss(torch.nn.Module):
    """Stands in for OpenRLHF's DPOLoss: its own beta, returns (loss, chosen rewards, rejected rewards)."""

    beta = 0.1

    def forward(self, pc, pr, rc, rr):
        chosen, rejected = self.beta * (pc - rc), self.beta * (pr - rr)
        return -F.logsigmoid(chosen - rejected).mean(), chosen, rejected


def test_dpo_loss_takes_its_beta_group_and_accumulation():
    """beta given overrides the host's (the margins F is computed from use it); the process group and the
    gradient accumulation reach the loss (accumulation 1 by default: micro-step 3 is step 3)."""
    from openrlhf_fair.core.dpo_losses import FairDPOLoss

    pc, pr = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-3.0, -1.0, -2.5])
    rc, rr = torch.tensor([-1.5, -1.5, -1.5]), torch.tensor([-1.5, -1.5, -1.5])
    loss = FairDPOLoss(HostDPOLoss(), RewardFairnessConfig(reg=0.1), beta=0.5)
    with torch.no_grad():
        loss(pc, pr, rc, rr)
    x = torch.sigmoid(0.5 * ((pc - rc) - (pr - rr))).double()
    assert loss.eval_logs()["fairness/F"] == pytest.approx(float(x.sum() ** 2 / (3 * (x**2).sum())), rel=1e-6)
    group = object()
    assert FairDPOLoss(HostDPOLoss(), RewardFairnessConfig(reg=0.1), process_group=group).process_group is group
    nan = torch.tensor([math.nan, -1.0, -1.0], requires_grad=True)
    for kwargs, named in (({}, "step 3 (micro-step 3)"), ({"steps_per_update": 2}, "step 2 (micro-step 3)")):
        fair = FairDPOLoss(HostDPOLoss(), RewardFairnessConfig(reg=0.1), **kwargs)
        with pytest.raises(FairnessTrainingError, match=re.escape(named)):
            fair(nan, pr, rc, rr, step=3)


def test_batch_sum_term_is_computed_in_float64():
    """bf16 / float32 rewards (what the host hands over) are summed in float64, as the docstring promises."""
    chosen = torch.tensor([1e4, 1.0, 3.0], dtype=torch.float32)
    reject = torch.tensor([-1e4, 2e-3, -4.0], dtype=torch.float32)
    term = reward_terms.batch_sum_term(chosen, reject, 0.5)
    mean = (chosen.double().sum() + reject.double().sum()) / 6
    assert term.dtype == torch.float64 and float(term) == pytest.approx(float(0.5 * 3 * mean**2), rel=1e-12)


# ----------------------------------------------------------------------------------------------- fairness.py
def _f_of_margins_float64(margins, tau, temperature, normalize=True):
    x = torch.sigmoid(torch.as_tensor(margins, dtype=torch.float64) / temperature)
    p = x / x.sum()
    f = (p ** (1 - tau)).sum() ** (1 / tau)
    return float(f / x.numel()) if normalize else float(f)


def test_fairness_of_margins_uses_its_temperature_and_normalisation():
    """Catches a call that passes `normalize` where the temperature goes (T = True = 1, normalised always)."""
    from fair_reference import fairness_of_margins  # sign(1 - tau) * exp(log_fairness_of_margins(...))

    m = [1.5, -0.5, 0.2, 3.0]
    for tau in (-1.0, 0.5, 2.0):
        for temperature, normalize in ((0.3, True), (1.0, False), (2.5, False)):
            ours = float(fairness_of_margins(torch.tensor(m, dtype=torch.float64), tau, temperature, normalize))
            sign = 1.0 if tau < 1 else -1.0
            assert ours == pytest.approx(sign * _f_of_margins_float64(m, tau, temperature, normalize), rel=1e-10)


def test_exp_or_inf_is_inf_where_math_exp_overflows():
    """math.exp raises OverflowError above log(max float64) = 709.78: exp_or_inf must give inf there."""
    from openrlhf_fair.core.fairness import exp_or_inf

    assert exp_or_inf(709.9) == math.inf and exp_or_inf(1e4) == math.inf
    assert exp_or_inf(708.5) == math.exp(708.5) and exp_or_inf(-800.0) == 0.0


def test_bad_margins_or_allocations_are_refused_naming_which():
    from openrlhf_fair.core.fairness import log_fairness, log_fairness_of_margins

    for call, name in ((log_fairness_of_margins, "margins"), (log_fairness, "allocation x")):
        with pytest.raises(FairnessInputError, match=rf"^{name} contains 1 NaN/Inf"):
            call(torch.tensor([1.0, math.nan]))


# ----------------------------------------------------------------------------------------------- report, patch
def test_report_pearson_is_computed_in_float64():
    """Lengths and rewards with a large common offset: float32 (torch's default for Python floats) loses the
    differences and gives a wrong correlation."""
    from openrlhf_fair.report.metrics import pearson

    x = [1e8 + v for v in (0.0, 1.0, 2.0, 4.0)]
    y = [1.0, 3.0, 2.0, 5.0]
    xs, ys = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    dx, dy = xs - xs.mean(), ys - ys.mean()
    assert pearson(x, y) == pytest.approx(float((dx * dy).sum() / (dx.norm() * dy.norm())), rel=1e-12)
    assert pearson(y, x) == pytest.approx(pearson(x, y), rel=1e-12)


def test_patch_eval_logs_without_a_group_key():
    """The eval call site on a run without --fairness_group_key (its eval dataset has no group names): the
    eval metrics without groups, printed on one line."""
    from types import SimpleNamespace

    from openrlhf_fair.features.pairwise_trainer import eval_logs

    loss = FairPairWiseLoss(bt_loss, RewardFairnessConfig(reg=0.1))
    with torch.no_grad():
        loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 3.0]))
    printed = []
    trainer = SimpleNamespace(loss_fn=loss, eval_dataloader=SimpleNamespace(dataset=object()),
                              strategy=SimpleNamespace(all_gather=lambda t: t, print=printed.append))
    out = eval_logs(trainer)
    x = torch.sigmoid(torch.tensor([1.0, -1.0], dtype=torch.float64))
    assert out["fairness/jain"] == pytest.approx(float(x.sum() ** 2 / (2 * (x**2).sum())), rel=1e-6)
    assert not any(key.startswith("fairness/acc") for key in out)
    assert printed == ["openrlhf-fair eval: " + ", ".join(f"{k}={v:.4g}" for k, v in out.items())]


def test_non_positive_allocations_are_counted_in_the_message():
    from openrlhf_fair.core.fairness import log_fairness

    with pytest.raises(FairnessInputError, match=r"^allocation x must be strictly positive, 2 of 5 value\(s\) are <= 0"):
        log_fairness(torch.tensor([0.5, 0.0, -1.0, 2.0, 1.0]))


def test_data_parallel_size_of_a_single_process_and_its_defaults():
    """The global-scope check's rank count: world // ring attention // tensor parallel, 1 for a single process
    whose strategy has no world size and whose command line sets neither parallelism."""
    from types import SimpleNamespace

    from openrlhf_fair.host.compat import host_args_like
    from openrlhf_fair.features.pairwise_trainer import data_parallel_size

    assert data_parallel_size(SimpleNamespace(args=host_args_like({}))) == 1
    assert data_parallel_size(SimpleNamespace(world_size=None, args=host_args_like({}))) == 1
    assert data_parallel_size(SimpleNamespace(world_size=4, args=host_args_like({}))) == 4
    ranks = host_args_like({"ds.ring_attn_size": 2, "ds.tensor_parallel_size": 2})
    assert data_parallel_size(SimpleNamespace(world_size=8, args=ranks)) == 2
    # a whole number of ranks (it is printed in the refusal): 3 ranks with tensor parallel 2 hold 1 data-parallel rank
    odd = [data_parallel_size(SimpleNamespace(world_size=w, args=host_args_like({"ds.ring_attn_size": r,
                                                                                  "ds.tensor_parallel_size": t})))
           for w, r, t in ((3, 1, 2), (6, 4, 1), (8, 2, 2))]
    assert odd == [1, 1, 2] and all(type(size) is int for size in odd)


def test_micro_batch_refusal_counts_one_ranks_pairs_in_micro_scope_and_all_ranks_in_global_scope():
    """OpenRLHF's default micro-batch of one pair is refused in micro scope even on several ranks (F is per
    rank there), accepted in global scope over 2 ranks, and refused in global scope on one rank; each message
    says which set F is computed over and how to fix it."""
    from types import SimpleNamespace

    from openrlhf_fair.errors import FairnessConfigError
    from openrlhf_fair.host.compat import host_args_like
    from openrlhf_fair.features.pairwise_trainer import check_run

    def strategy(world):
        return SimpleNamespace(world_size=world, args=host_args_like({"train.micro_batch_size": 1}))

    with pytest.raises(FairnessConfigError, match=r"but the micro-batch has 1 \(--train.micro_batch_size 1;.*"
                                                  r"or use --fairness_scope global on several ranks\.$"):
        check_run(RewardFairnessConfig(reg=0.1), strategy(2))
    check_run(RewardFairnessConfig(reg=0.1, scope="global"), strategy(2))
    with pytest.raises(FairnessConfigError, match=r"but the global micro-batch \(1 data-parallel rank\(s\)\) has 1 "
                                                  r"\(--train.micro_batch_size 1;.*\(the authors used 32\)\.$"):
        check_run(RewardFairnessConfig(reg=0.1, scope="global"), strategy(1))


def test_group_key_with_packing_is_refused_naming_the_key():
    from types import SimpleNamespace

    from openrlhf_fair.host.compat import host_args_like
    from openrlhf_fair.features.pairwise_trainer import check_run

    packed = SimpleNamespace(world_size=1, args=host_args_like({"train.micro_batch_size": 8, "ds.packing_samples": True}))
    with pytest.raises(Exception, match=r"^--fairness_group_key category is not supported with --ds.packing_samples"):
        check_run(RewardFairnessConfig(reg=0.1, group_key="category"), packed)


def test_a_direct_fairness_loss_call_names_step_one_and_the_rewards():
    """`fairness_loss` (the pure computation) called without a step is step 1; a NaN reward is named as such."""
    loss = FairPairWiseLoss(bt_loss, RewardFairnessConfig(reg=0.1))
    chosen, reject = torch.tensor([1.0, math.nan]), torch.tensor([0.0, 0.0])
    with pytest.raises(FairnessTrainingError, match=r"at training step 1 \(micro-step 1\): NaN/Inf in the rewards; "):
        loss.fairness_loss(torch.tensor(0.5), chosen, reject)


def test_level_fairness_in_global_scope_is_over_the_gathered_levels():
    """With --fairness_scope global the levels go through the loss's data-parallel gather (here a stand-in that
    adds another rank's two levels), so level F covers all ranks' pairs, not this rank's alone."""
    loss = FairPairWiseLoss(bt_loss, RewardFairnessConfig(level_reg=1.0, scope="global"))
    other = torch.tensor([5.0, -3.0], dtype=torch.float64)
    loss._gather = lambda values, ids: (torch.cat([values, other.to(values.dtype)]), ids)
    chosen = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    reject = torch.tensor([0.0, 1.0], dtype=torch.float64)
    _, step_metrics = loss.fairness_loss(bt_loss(chosen, reject), chosen, reject)
    log_f, items = reward_terms.level_log_fairness(torch.cat([reward_terms.pair_levels(chosen, reject).detach(), other]))
    assert items == 4 and step_metrics["fairness/level_F"] == pytest.approx(float(log_f.exp()), rel=1e-12)


def test_nan_rejected_rewards_and_margins_are_named():
    loss = FairPairWiseLoss(bt_loss, RewardFairnessConfig(reg=0.1))
    ok = torch.tensor([1.0, 2.0])
    with pytest.raises(FairnessTrainingError, match=r"\): NaN/Inf in the rewards; "):
        loss.fairness_loss(torch.tensor(0.5), ok, torch.tensor([0.0, math.nan]))
    with pytest.raises(FairnessTrainingError, match=r"\): NaN/Inf in the margin; "):
        loss.fairness_loss(torch.tensor(0.5), ok, torch.zeros(2), torch.tensor([math.nan, 0.0]))


def test_measure_only_warns_about_a_single_pair_naming_the_step():
    loss = FairPairWiseLoss(bt_loss, RewardFairnessConfig(), steps_per_update=2)  # no fairness flag: measure only
    with pytest.warns(RuntimeWarning, match=r"at training step 2 \(micro-step 3\): fairness F is computed over 1 pair"):
        loss(torch.tensor([1.0], requires_grad=True), torch.tensor([0.0]), step=3)


@pytest.mark.parametrize("settings", [dict(reg=0.1), dict(coef=0.5), dict(coef=0.5, level_reg=1.0)],
                         ids=["fr", "fc", "fc+level"])
def test_the_loss_keeps_the_host_losss_dtype(settings):
    """The fairness math runs in float64; the loss handed back to the host is in the host loss's dtype."""
    loss = FairPairWiseLoss(bt_loss, RewardFairnessConfig(**settings))
    out = loss(torch.tensor([1.0, 0.5, -0.2], requires_grad=True), torch.tensor([0.0, 1.0, 0.3]))
    assert out.dtype == torch.float32


def test_ppo_agent_ids_must_be_integers_one_per_sample():
    from openrlhf_fair.settings import PPOFairnessConfig
    from openrlhf_fair.core.shaping import fairness_weights

    rewards, config = torch.tensor([0.5, -1.0, 2.0, 0.0]), PPOFairnessConfig(coef=0.5)
    for bad in (torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.tensor([True, True, False, False]), torch.tensor([0, 1])):
        with pytest.raises(FairnessInputError, match=r"^agent_ids must be 4 integers \(one per sample\)"):
            fairness_weights(rewards, bad, config)


def test_ppo_clipped_fraction_is_the_share_of_clipped_samples():
    """A narrow clip range: the logged clipped_frac is (samples whose weight hit a bound) / samples."""
    from openrlhf_fair.settings import PPOFairnessConfig
    from openrlhf_fair.core.shaping import fairness_weights

    shaping = fairness_weights(torch.tensor([3.0, 3.0, -3.0, -3.0]), torch.tensor([0, 0, 1, 1]),
                               PPOFairnessConfig(coef=0.5, weight_clip=(0.99, 1.01)))
    assert shaping.num_clipped > 0
    assert shaping.metrics()["clipped_frac"] == shaping.num_clipped / 4


def test_ppo_weights_follow_agent_ids_in_any_order_and_a_single_sample_is_a_batch():
    """One sample per agent with the ids out of order gives the same weight per agent as in order (the fast path
    must not pair sample i with agent i); a batch of one sample is valid (weight 1); 1 NaN reward is counted."""
    from openrlhf_fair.settings import PPOFairnessConfig
    from openrlhf_fair.core.shaping import fairness_weights

    config = PPOFairnessConfig(coef=0.5)
    rewards = torch.tensor([2.0, -1.0, 0.5])
    in_order = fairness_weights(rewards, torch.tensor([0, 1, 2]), config).sample_weights
    for ids in ([2, 0, 1], [1, 2, 0]):
        assert torch.allclose(fairness_weights(rewards, torch.tensor(ids), config).sample_weights, in_order, rtol=1e-12)
    assert fairness_weights(torch.tensor([0.5]), torch.tensor([0]), config).sample_weights.tolist() == [1.0]
    with pytest.raises(FairnessInputError, match=r"^1 of 3 rewards are NaN/Inf"):
        fairness_weights(torch.tensor([1.0, math.nan, 0.0]), torch.tensor([0, 1, 2]), config)
