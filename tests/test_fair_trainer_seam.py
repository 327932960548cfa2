"""The pairwise trainers' seam against the real OpenRLHF classes: what the runtime call sites hand to the loss
and to the host's logs, and the runtime stops of the loss.

Each test here fails under a one-line bug in the code it covers (tried by hand; see notes/trainer.md):
a dropped all-reduce of the step metrics, a fit call site that does not realign the step on resume, a group-label
feed that sends every pair as one group, a dropped undo of the PPO label patches, a dropped non-finite check.
"""

import math
from types import SimpleNamespace

import pytest
import torch

from openrlhf_fair.settings import RewardFairnessConfig
from openrlhf_fair.host.patching import is_patched, original_of
from openrlhf_fair.errors import FairnessTrainingError
from openrlhf_fair.core.losses import FairPairWiseLoss
from test_fair_rm_patch import FakeStrategy, Recorder, make_trainer


@pytest.fixture(scope="module")
def host():
    from openrlhf_fair.cpu_backend import stand_ins

    installed = [name for name in ("flash_attn", "vllm") if stand_ins.install(name)]
    import openrlhf.models as models
    import openrlhf.trainer.rm_trainer as rm_trainer

    yield SimpleNamespace(rm_trainer=rm_trainer, models=models)
    for name in installed:
        stand_ins.uninstall(name)


@pytest.fixture
def rm_patch(host):
    from openrlhf_fair.features import pairwise_trainer

    undos = []
    yield lambda config: undos.append(pairwise_trainer.apply_rm_fairness(config))
    for undo in reversed(undos):
        undo()


def pairwise(chosen, reject, margin=None):
    return -torch.nn.functional.logsigmoid(chosen - reject).mean()


def tagged_batch(group_ids, names=("harmless", "helpful")):
    from openrlhf_fair.features.labels import GroupTaggedExtras

    return (None, None, None, None, GroupTaggedExtras([0.0] * len(group_ids), group_ids, list(names)))


def host_like_fit(self, args, consumed_samples=0, num_update_steps_per_epoch=None):
    """Stands in for the host's fit (the call site wraps the real one): one loss call per batch, as the host does."""
    for batch in self.train_dataloader:
        self.loss_fn(*self._rewards(batch))


@pytest.fixture
def stub_fit(host, monkeypatch):
    monkeypatch.setattr(host.rm_trainer.RewardModelTrainer, "fit", host_like_fit)


# ----------------------------------------------------------------------------------------------- step logs
class TwoRankStrategy(FakeStrategy):
    """all_reduce (mean) as on two data-parallel ranks whose other rank logged ``other``."""

    def __init__(self, other: dict, **kwargs):
        super().__init__(**kwargs)
        self.other = other

    def all_reduce(self, data, op="mean"):
        return {k: (v + self.other[k]) / 2 for k, v in data.items()}


def test_step_metrics_are_averaged_over_data_parallel_ranks(host, rm_patch):
    other = {name: 0.25 for name in ("fairness/F", "fairness/jain", "fairness/gini", "fairness/base_loss",
                                     "fairness/term", "fairness/items")}  # fmt: skip
    rm_patch(RewardFairnessConfig(reg=0.1))
    trainer, _, strategy = make_trainer(host, strategy=TwoRankStrategy(other))
    trainer._tensorboard, trainer.num_update_steps_per_epoch = Recorder(), 10**9
    chosen, reject = torch.tensor([0.5, -0.2, 1.5, 0.1]), torch.tensor([0.1, 0.3, -0.5, 0.0])
    trainer.loss_fn(chosen, reject, None)
    mine = trainer.loss_fn.extra_logs()
    logs = {"loss": 0.5}
    trainer.save_logs_and_checkpoints(strategy.args, 1, Recorder(), logs, {})
    for name, value in mine.items():
        assert logs[name] == pytest.approx((value + 0.25) / 2), name


# ----------------------------------------------------------------------------------------------- fit call site
def test_fit_realigns_the_step_on_resume(host, stub_fit, rm_patch):
    """A run resumed after 32 samples (batch 16, accumulation 2) starts at micro-step 5 = step 3, as the host counts."""
    rm_patch(RewardFairnessConfig(reg=0.1))
    trainer, _, strategy = make_trainer(host)
    bad = (torch.tensor([1.0, float("nan")]), torch.tensor([0.0, 0.0]))
    trainer._rewards = lambda batch: (*bad, None)
    trainer.train_dataloader = [tagged_batch([0, 1])]
    with pytest.raises(FairnessTrainingError, match=r"training step 3 \(micro-step 5\)"):
        trainer.fit(strategy.args, consumed_samples=32)
    with pytest.raises(FairnessTrainingError, match=r"training step 1 \(micro-step 1\)"):
        trainer.fit(strategy.args, consumed_samples=0)


def test_fit_feeds_each_batchs_group_labels_to_the_loss(host, stub_fit, rm_patch):
    config = RewardFairnessConfig(reg=0.5, group_key="category")
    rm_patch(config)
    trainer, _, strategy = make_trainer(host)
    chosen = torch.tensor([2.0, 1.5, -0.5, 0.0], dtype=torch.float64)
    reject = torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=torch.float64)
    trainer._rewards = lambda batch: (chosen, reject, None)
    trainer.train_dataloader = [tagged_batch([0, 0, 1, 1])]
    trainer.fit(strategy.args)
    logs = trainer.loss_fn.extra_logs()
    assert logs["fairness/items"] == 2.0  # two groups, not four pairs, not one group
    x = torch.sigmoid(chosen - reject)
    groups = torch.stack([x[:2].mean(), x[2:].mean()])
    assert logs["fairness/F"] == pytest.approx(float(groups.sum() ** 2 / (2 * (groups**2).sum())), rel=1e-9)
    assert type(trainer.loss_fn) is FairPairWiseLoss and type(trainer.train_dataloader) is list  # restored after fit


# ----------------------------------------------------------------------------------------------- eval call site
def host_like_evaluate(self, eval_dataloader, steps=0):
    """Stands in for the host's evaluate: loss calls without gradients, then all_reduce of its eval logs."""
    with torch.no_grad():
        for batch in eval_dataloader:
            self.loss_fn(*self._rewards(batch))
        self.eval_logs = self.strategy.all_reduce({"eval_loss": 0.5})


def test_eval_metrics_join_the_host_eval_logs(host, monkeypatch, rm_patch):
    monkeypatch.setattr(host.rm_trainer.RewardModelTrainer, "evaluate", host_like_evaluate)
    rm_patch(RewardFairnessConfig(reg=0.1, group_key="category"))
    trainer, _, _ = make_trainer(host)
    chosen, reject = torch.tensor([1.0, 2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0, 0.0])
    trainer._rewards = lambda batch: (chosen, reject, None)
    loader = [tagged_batch([0, 0, 1, 1])]
    trainer.eval_dataloader = SimpleNamespace(dataset=SimpleNamespace(fair_group_names=["harmless", "helpful"]))
    trainer.strategy.all_gather = lambda t: t
    trainer.evaluate(loader, 3)
    logs = trainer.eval_logs
    assert logs["eval_loss"] == 0.5 and logs["fairness/acc/harmless"] == 1.0 and logs["fairness/acc/helpful"] == 0.0
    assert logs["fairness/margin/helpful"] == pytest.approx(-1.0) and "fairness/F_groups" in logs
    assert "all_reduce" not in vars(trainer.strategy)  # the call site is gone after evaluate
    assert any(line.startswith("openrlhf-fair eval: fairness/jain=") for line in trainer.strategy.printed)


# ----------------------------------------------------------------------------------------------- runtime stops
@pytest.mark.parametrize(
    "chosen, reject, margin, what",
    [
        ([1.0, float("nan"), 0.5], [0.0, 0.0, 0.0], None, "rewards"),
        ([1.0, 2.0, 0.5], [0.0, float("inf"), 0.0], None, "rewards"),
        ([1.0, 2.0, 0.5], [0.0, 0.0, 0.0], [0.1, float("nan"), 0.0], "margin"),
    ],
)
def test_non_finite_reward_or_margin_stops_naming_the_step(chosen, reject, margin, what):
    loss = FairPairWiseLoss(pairwise, RewardFairnessConfig(group_key=None), steps_per_update=2)  # measure only
    margin = None if margin is None else torch.tensor(margin)
    with pytest.raises(FairnessTrainingError, match=rf"training step 2 \(micro-step 3\): NaN/Inf in the .*{what}"):
        loss(torch.tensor(chosen, requires_grad=True), torch.tensor(reject), margin, step=3)


def test_non_finite_base_loss_stops_naming_the_step():
    loss = FairPairWiseLoss(lambda c, r, m: (c - r).sum() * math.inf, RewardFairnessConfig(reg=0.1))
    with pytest.raises(FairnessTrainingError, match=r"training step 4 \(micro-step 4\): NaN/Inf in the base loss"):
        loss(torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([0.0, 0.0]), step=4)


def test_overflowing_F_with_finite_margins_stops_the_run():
    """tau = 5 with an extreme but finite margin passes every input check; F = -inf must still stop the run."""
    loss = FairPairWiseLoss(pairwise, RewardFairnessConfig(reg=0.1, tau=5.0))
    chosen = torch.tensor([200.0, -1000.0, 0.0], dtype=torch.float64, requires_grad=True)
    with pytest.raises(FairnessTrainingError, match=r"at training step 1 .*fairness F = -inf .* is not finite"):
        loss(chosen, torch.zeros(3, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------- PPO label patches
def test_prompt_dataset_and_samples_generator_label_patches_undo(host):
    from openrlhf.datasets import prompts_dataset
    from openrlhf.trainer.ppo_utils import samples_generator

    from openrlhf_fair.features import experience_maker
    from openrlhf_fair.settings import PPOFairnessConfig

    targets = [(prompts_dataset.PromptDataset, "__init__"),
               (samples_generator.SamplesGenerator, "_process_response_into_experience")]  # fmt: skip
    before = [owner.__dict__[name] for owner, name in targets]
    undo = experience_maker.apply_in_process(PPOFairnessConfig(coef=0.5, unit="label:category"))
    try:
        for (owner, name), original in zip(targets, before):
            assert is_patched(owner, name) and original_of(getattr(owner, name)) is original
    finally:
        undo()
    assert [owner.__dict__[name] for owner, name in targets] == before
    assert experience_maker.PATCH_ID not in experience_maker._active
