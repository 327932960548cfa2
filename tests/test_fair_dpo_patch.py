"""Patch checklist for `openrlhf train_dpo` fairness against the real DPOTrainer (no training run here): replaced
for real with the right loss, applying twice harmless, undo restores, a moved host symbol fails loudly, nothing
patched when the flags are off, bad runs refused before the host trainer is built."""

from types import SimpleNamespace

import pytest
import torch

from openrlhf_fair.cli.flags import parse_fairness_args
from openrlhf_fair.errors import FairnessConfigError, HostMismatchError
from openrlhf_fair.settings import RewardFairnessConfig
from openrlhf_fair.host.patching import is_patched
from test_fair_rm_patch import FakeStrategy as RewardModelStrategy

METHODS = ("__init__", "fit", "save_logs_and_checkpoints", "evaluate")


@pytest.fixture(scope="module")
def host():
    from openrlhf_fair.cpu_backend import stand_ins

    installed = stand_ins.install("flash_attn")  # False where the real package (or an earlier stand-in) serves it
    import openrlhf.trainer.dpo_trainer as dpo_trainer

    yield dpo_trainer
    if installed:
        stand_ins.uninstall("flash_attn")


@pytest.fixture
def dpo_patch(host, monkeypatch):
    from openrlhf_fair.features import pairwise_trainer

    monkeypatch.setenv("OPENRLHF_FAIR_PATCH_MODE", "runtime")  # the installed OpenRLHF may carry patches/
    undos = []

    def apply(config):
        undos.append(pairwise_trainer.apply_dpo_fairness(config))
        return undos[-1]

    yield apply
    for undo in reversed(undos):
        undo()
    for name in METHODS:
        assert not is_patched(host.DPOTrainer, name), f"{name} left patched by a test"


class FakeStrategy(RewardModelStrategy):
    """The parts of OpenRLHF's DeepspeedStrategy that DPOTrainer.__init__ touches: the reward-model trainer's fake
    (test_fair_rm_patch) with DPO's model flags."""

    def __init__(self, micro=4, ipo=False):
        super().__init__(micro=micro)
        self.args.model = SimpleNamespace(aux_loss_coef=0, nll_loss_coef=0, label_smoothing=0.0, ipo_enable=ipo)


class TinyPolicy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from transformers import PretrainedConfig

        self.config = PretrainedConfig()


def make_trainer(host, strategy=None):
    strategy = strategy or FakeStrategy()
    model = TinyPolicy()
    trainer = host.DPOTrainer(
        model=model, ref_model=None, strategy=strategy, tokenizer=None, optim=None, train_dataloader=None,
        eval_dataloader=None, scheduler=None, beta=0.2,
    )  # fmt: skip
    return trainer, model, strategy


def test_patched_trainer_gets_fair_dpo_loss_around_the_host_loss(host, dpo_patch):
    from openrlhf_fair.core.dpo_losses import FairDPOLoss

    before = {name: host.DPOTrainer.__dict__[name] for name in METHODS}
    undo = dpo_patch(RewardFairnessConfig(coef=0.5, coef_form="inverse"))
    assert all(is_patched(host.DPOTrainer, name) for name in METHODS)
    trainer, model, strategy = make_trainer(host, FakeStrategy(ipo=True))
    assert isinstance(trainer.loss_fn, FairDPOLoss) and trainer.loss_fn.beta == 0.2
    assert type(trainer.loss_fn.dpo_loss).__name__ == "DPOLoss" and trainer.loss_fn.dpo_loss.ipo
    assert trainer.loss_fn.steps_per_update == 2
    assert model.config.openrlhf_fair["method"] == "fc" and model.config.openrlhf_fair["coef_form"] == "inverse"
    assert any("openrlhf-fair: beta=0.2, FC (inverse)" in line for line in strategy.printed)
    undo()
    assert {name: host.DPOTrainer.__dict__[name] for name in METHODS} == before
    assert type(make_trainer(host)[0].loss_fn).__name__ == "DPOLoss"


def test_applying_twice_is_harmless_and_a_second_config_is_refused(host, dpo_patch):
    config = RewardFairnessConfig(reg=0.1)
    dpo_patch(config)
    patched = host.DPOTrainer.__dict__["__init__"]
    dpo_patch(config)
    assert host.DPOTrainer.__dict__["__init__"] is patched
    with pytest.raises(FairnessConfigError, match="already patched"):
        dpo_patch(RewardFairnessConfig(reg=0.2))


def test_moved_host_symbol_fails_loudly_and_patches_nothing(host, dpo_patch, monkeypatch):
    monkeypatch.delattr(host.DPOTrainer, "save_logs_and_checkpoints")
    with pytest.raises(HostMismatchError, match="DPOTrainer.save_logs_and_checkpoints not found"):
        dpo_patch(RewardFairnessConfig(reg=0.1))
    assert not is_patched(host.DPOTrainer, "__init__")


def test_nothing_patched_when_fairness_flags_are_off(host):
    argv = ["--model.beta", "0.1", "--train.micro_batch_size", "4"]
    assert parse_fairness_args("train_dpo", argv) == (None, argv)
    config, rest = parse_fairness_args("train_dpo", [*argv, "--fairness_coef", "0.5"])
    assert config == RewardFairnessConfig(coef=0.5) and rest == argv
    assert not any(is_patched(host.DPOTrainer, name) for name in METHODS)


def test_micro_batch_of_one_is_refused_before_the_host_trainer_is_built(host, dpo_patch):
    dpo_patch(RewardFairnessConfig(reg=0.1))
    strategy = FakeStrategy(micro=1)
    with pytest.raises(FairnessConfigError, match="at least 2 preference pairs"):
        make_trainer(host, strategy)
    assert strategy.printed == []
