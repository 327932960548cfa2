"""Patch checklist for `openrlhf train_rm` fairness against the real OpenRLHF classes (no training run here).

Replaced for real, applying twice harmless, undo restores the originals, a moved host symbol fails loudly
before anything is patched, nothing patched when the flags are off; and the patched trainer / dataset
compute the right things with the host's own PairWiseLoss / LogExpLoss / RewardDataset.
"""

from types import SimpleNamespace

import pytest
import torch

from openrlhf_fair.cli.flags import parse_fairness_args
from openrlhf_fair.errors import FairnessConfigError, HostMismatchError
from openrlhf_fair.settings import RewardFairnessConfig
from openrlhf_fair.host.patching import is_patched, original_of


@pytest.fixture(scope="module")
def host():
    """OpenRLHF's trainer and dataset modules, importable on CPU through the flash_attn import stand-in."""
    from openrlhf_fair.cpu_backend import stand_ins

    installed = stand_ins.install("flash_attn")
    import openrlhf.datasets.reward_dataset as reward_dataset
    import openrlhf.models as models
    import openrlhf.trainer.rm_trainer as rm_trainer

    yield SimpleNamespace(rm_trainer=rm_trainer, reward_dataset=reward_dataset, models=models)
    if installed:
        stand_ins.uninstall("flash_attn")


@pytest.fixture
def rm_patch(host):
    from openrlhf_fair.features import pairwise_trainer

    undos = []

    def apply(config):
        undo = pairwise_trainer.apply_rm_fairness(config)
        undos.append(undo)
        return undo

    yield apply
    for undo in reversed(undos):
        undo()
    for name in pairwise_trainer.WRAPPED_PARAMETERS:
        assert not is_patched(host.rm_trainer.RewardModelTrainer, name), f"{name} left patched by a test"


TRAINER_METHODS = ("__init__", "fit", "save_logs_and_checkpoints", "evaluate")
DATASET_METHODS = ("__init__", "__getitem__", "collate_fn")


def originals(cls, names):
    return {name: cls.__dict__[name] for name in names}


def test_target_really_replaced_and_undo_restores(host, rm_patch):
    trainer_cls, dataset_cls = host.rm_trainer.RewardModelTrainer, host.reward_dataset.RewardDataset
    before, before_ds = originals(trainer_cls, TRAINER_METHODS), originals(dataset_cls, DATASET_METHODS)
    undo = rm_patch(RewardFairnessConfig(reg=0.1, group_key="category"))
    for name, original in before.items():
        assert trainer_cls.__dict__[name] is not original
        assert is_patched(trainer_cls, name) and original_of(trainer_cls.__dict__[name]) is original
    for name, original in before_ds.items():
        assert is_patched(dataset_cls, name) and original_of(dataset_cls.__dict__[name]) is original
    undo()
    assert originals(trainer_cls, TRAINER_METHODS) == before
    assert originals(dataset_cls, DATASET_METHODS) == before_ds


def test_dataset_untouched_without_group_key(host, rm_patch):
    dataset_cls = host.reward_dataset.RewardDataset
    before = originals(dataset_cls, DATASET_METHODS)
    rm_patch(RewardFairnessConfig(reg=0.1))
    assert originals(dataset_cls, DATASET_METHODS) == before


def test_applying_twice_is_harmless_and_a_second_config_is_refused(host, rm_patch):
    trainer_cls = host.rm_trainer.RewardModelTrainer
    config = RewardFairnessConfig(coef=0.5)
    rm_patch(config)
    patched = originals(trainer_cls, TRAINER_METHODS)
    undo_second = rm_patch(RewardFairnessConfig(coef=0.5))  # equal config: no-op
    assert originals(trainer_cls, TRAINER_METHODS) == patched
    undo_second()  # undoing the no-op leaves the first patch in place
    assert originals(trainer_cls, TRAINER_METHODS) == patched
    with pytest.raises(FairnessConfigError, match="already patched"):
        rm_patch(RewardFairnessConfig(reg=0.1))


@pytest.mark.parametrize(
    "owner, name, message",
    [
        ("trainer", "save_logs_and_checkpoints", "RewardModelTrainer.save_logs_and_checkpoints not found"),
        ("module", "RewardModelTrainer", "rm_trainer.RewardModelTrainer not found"),
        ("dataset", "collate_fn", "RewardDataset.collate_fn not found"),
    ],
)
def test_moved_host_symbol_fails_loudly_and_patches_nothing(host, rm_patch, monkeypatch, owner, name, message):
    target = {
        "trainer": host.rm_trainer.RewardModelTrainer,
        "module": host.rm_trainer,
        "dataset": host.reward_dataset.RewardDataset,
    }[owner]
    trainer_cls = host.rm_trainer.RewardModelTrainer
    before = originals(trainer_cls, [n for n in TRAINER_METHODS if n != name])
    monkeypatch.delattr(target, name)
    with pytest.raises(HostMismatchError, match=message):
        rm_patch(RewardFairnessConfig(reg=0.1, group_key="category" if owner == "dataset" else None))
    assert originals(trainer_cls, [n for n in TRAINER_METHODS if n != name]) == before
    assert not any(is_patched(trainer_cls, n) for n in before)


def test_changed_host_signature_fails_loudly_before_patching(host, rm_patch, monkeypatch):
    trainer_cls = host.rm_trainer.RewardModelTrainer

    def fit(self, args):  # a host release that dropped consumed_samples
        pass

    monkeypatch.setattr(trainer_cls, "fit", fit)
    with pytest.raises(HostMismatchError, match="no parameter.*consumed_samples"):
        rm_patch(RewardFairnessConfig(reg=0.1))
    assert not any(is_patched(trainer_cls, n) for n in TRAINER_METHODS)


def test_nothing_patched_when_fairness_flags_are_off(host):
    """No fairness flag: no config (so the runner applies nothing), and importing our host modules patches nothing."""
    argv = ["--model.model_name_or_path", "m", "--train.micro_batch_size", "8", "--model.loss_type", "sigmoid"]
    assert parse_fairness_args("train_rm", argv) == (None, argv)
    import openrlhf_fair.features.labels  # noqa: F401
    import openrlhf_fair.features.pairwise_trainer  # noqa: F401

    for name in TRAINER_METHODS:
        assert not is_patched(host.rm_trainer.RewardModelTrainer, name)
    for name in DATASET_METHODS:
        assert not is_patched(host.reward_dataset.RewardDataset, name)


# ----------------------------------------------------------------------------------------------- the patched trainer
class FakeStrategy:
    """The parts of OpenRLHF's DeepspeedStrategy that RewardModelTrainer.__init__ and the log step touch."""

    def __init__(self, micro=8, world_size=1, packing=False):
        self.args = SimpleNamespace(
            model=SimpleNamespace(aux_loss_coef=0, margin_loss_enable=False, compute_fp32_loss_enable=False),
            ds=SimpleNamespace(packing_samples=packing, ring_attn_size=1, tensor_parallel_size=1),
            logger=SimpleNamespace(wandb=SimpleNamespace(key=None), tensorboard_dir=None, logging_steps=1),
            train=SimpleNamespace(micro_batch_size=micro, batch_size=16),
            eval=SimpleNamespace(steps=10**9),
            ckpt=SimpleNamespace(save_steps=float("inf")),
        )
        self.world_size = world_size
        self.accumulated_gradient = 2
        self.printed = []

    def print(self, *msg):
        self.printed.append(" ".join(map(str, msg)))

    def _unwrap_model(self, model):
        return model

    def all_reduce(self, data, op="mean"):
        return data.clone() if isinstance(data, torch.Tensor) else dict(data)

    def is_rank_0(self):
        return True


class TinyRewardModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from transformers import PretrainedConfig

        self.config = PretrainedConfig()
        self.score = torch.nn.Linear(2, 1)


def make_trainer(host, strategy=None, loss="sigmoid"):
    strategy = strategy or FakeStrategy()
    model = TinyRewardModel()
    trainer = host.rm_trainer.RewardModelTrainer(
        model=model, strategy=strategy, optim=None, train_dataloader=None, eval_dataloader=None,
        scheduler=None, tokenizer=None, loss=loss,
    )
    return trainer, model, strategy


@pytest.mark.parametrize("loss, host_loss", [("sigmoid", "PairWiseLoss"), ("logexp", "LogExpLoss")])
def test_patched_trainer_wraps_the_host_loss_with_the_right_numbers(host, rm_patch, loss, host_loss):
    config = RewardFairnessConfig(reg=0.5, tau=-2.0)
    rm_patch(config)
    trainer, model, strategy = make_trainer(host, loss=loss)
    from openrlhf_fair.core.losses import FairPairWiseLoss

    assert isinstance(trainer.loss_fn, FairPairWiseLoss)
    assert type(trainer.loss_fn.base_loss).__name__ == host_loss
    assert trainer.loss_fn.steps_per_update == 2
    chosen = torch.tensor([0.5, -0.2, 1.5, 0.1], dtype=torch.float64)
    reject = torch.tensor([0.1, 0.3, -0.5, 0.0], dtype=torch.float64)
    base = getattr(host.models, host_loss)()(chosen, reject, None)
    x = torch.sigmoid(chosen - reject)
    p = x / x.sum()
    F = (p ** 3).sum() ** (-1 / 2) / 4  # tau = -2: sign(1 - tau) * (sum p^(1 - tau))^(1 / tau) / n
    assert float(trainer.loss_fn(chosen, reject, None)) == pytest.approx(float(base - 0.5 * F), rel=1e-12)
    assert model.config.openrlhf_fair["method"] == "fr" and model.config.openrlhf_fair["reg"] == 0.5
    assert "openrlhf_fair" in model.config.to_dict()
    assert any("FR: loss = base - 0.5 * F" in line for line in strategy.printed)


def test_unpatched_trainer_keeps_the_host_loss(host):
    trainer, model, _ = make_trainer(host)
    assert type(trainer.loss_fn).__name__ == "PairWiseLoss"
    assert not hasattr(model.config, "openrlhf_fair")


@pytest.mark.parametrize(
    "config, strategy, message",
    [
        (RewardFairnessConfig(reg=0.1), FakeStrategy(micro=1), "at least 2 preference pairs"),
        (RewardFairnessConfig(coef=0.5, scope="global"), FakeStrategy(micro=1, world_size=1), "global micro-batch"),
        (RewardFairnessConfig(reg=0.1, group_key="category"), FakeStrategy(packing=True), "packing_samples"),
    ],
    ids=["micro-batch-of-one", "global-one-rank", "group-key-with-packing"],
)
def test_bad_runs_fail_before_the_host_trainer_is_built(host, rm_patch, config, strategy, message):
    """The checks run in the loss hook, where the host has chosen its loss (the same point in native and runtime
    mode): the trainer is never built and the fairness loss never made, so no training step can run."""
    rm_patch(config)
    with pytest.raises(ValueError, match=message):
        make_trainer(host, strategy=strategy)
    assert strategy.printed in ([], ["LogSigmoid Loss"])  # only the host's loss choice; no openrlhf-fair loss


@pytest.mark.parametrize(
    "world, ring, tp, accepted",
    [(2, 1, 1, True), (4, 2, 1, True), (4, 1, 2, True), (2, 2, 1, False), (2, 1, 2, False), (4, 2, 2, False)],
)
def test_global_scope_with_one_pair_per_rank_on_two_ranks_is_accepted(host, rm_patch, world, ring, tp, accepted):
    """One pair per rank: accepted when >= 2 data-parallel ranks (world / ring_attn_size / tensor_parallel_size)
    share F, refused before the host trainer is built otherwise."""
    rm_patch(RewardFairnessConfig(reg=0.1, scope="global"))
    strategy = FakeStrategy(micro=1, world_size=world)
    strategy.args.ds.ring_attn_size, strategy.args.ds.tensor_parallel_size = ring, tp
    if not accepted:
        with pytest.raises(ValueError, match=r"global micro-batch \(1 data-parallel rank\(s\)\) has 1"):
            make_trainer(host, strategy=strategy)
        assert strategy.printed in ([], ["LogSigmoid Loss"])  # refused in the loss hook: no openrlhf-fair loss
        return
    trainer, model, _ = make_trainer(host, strategy=strategy)
    from openrlhf_fair.core.losses import FairPairWiseLoss

    assert isinstance(trainer.loss_fn, FairPairWiseLoss) and type(trainer.loss_fn.base_loss).__name__ == "PairWiseLoss"
    assert trainer.loss_fn.config.scope == "global" and model.config.openrlhf_fair["scope"] == "global"
    assert any("FR: loss = base - 0.1 * F" in line for line in strategy.printed)


class Recorder:
    def __init__(self):
        self.calls = []

    def add_scalar(self, *args):
        self.calls.append(args)

    def set_postfix(self, logs):
        self.calls.append(dict(logs))


def test_fairness_metrics_reach_the_host_logs(host, rm_patch):
    rm_patch(RewardFairnessConfig(reg=0.1))
    trainer, _, strategy = make_trainer(host)
    trainer._tensorboard, trainer.num_update_steps_per_epoch = Recorder(), 10**9
    chosen, reject = torch.tensor([0.5, -0.2, 1.5, 0.1]), torch.tensor([0.1, 0.3, -0.5, 0.0])
    trainer.loss_fn(chosen, reject, None)
    trainer.loss_fn(chosen * 2, reject, None)
    bar = Recorder()
    logs = {"loss": 0.5}
    trainer.save_logs_and_checkpoints(strategy.args, 1, bar, logs, {})
    names = {call[0] for call in trainer._tensorboard.calls}
    assert {"train/loss", "train/fairness/F", "train/fairness/jain", "train/fairness/gini", "train/fairness/base_loss", "train/fairness/term"} <= names
    assert "fairness/F" in bar.calls[-1] and 0 < logs["fairness/F"] <= 1
    x1, x2 = torch.sigmoid(chosen - reject), torch.sigmoid(chosen * 2 - reject)
    jain = lambda x: float(x.sum() ** 2 / (x.numel() * (x**2).sum()))  # noqa: E731
    assert logs["fairness/jain"] == pytest.approx((jain(x1) + jain(x2)) / 2, rel=1e-6)  # mean over the optimizer step


def test_eval_metrics_per_group():
    from openrlhf_fair.core.measures import pairwise_eval_metrics

    chosen = torch.tensor([1.0, 2.0, 0.0, -1.0, 0.5, 0.2])
    reject = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.4])
    ids = torch.tensor([0, 0, 1, 1, 1, 0])
    out = pairwise_eval_metrics(chosen, reject, tau=-1.0, temperature=1.0, group_ids=ids, group_names=["harmless", "helpful"])
    assert out["fairness/acc/harmless"] == pytest.approx(2 / 3) and out["fairness/acc/helpful"] == pytest.approx(1 / 3)
    assert out["fairness/acc_gap"] == pytest.approx(1 / 3) and out["fairness/worst_group_acc"] == pytest.approx(1 / 3)
    assert out["fairness/reward/harmless"] == pytest.approx((1 + 2 + 0.2 + 0 + 0 + 0.4) / 6)
    assert out["fairness/reward/helpful"] == pytest.approx((0 - 1 + 0.5 + 1 + 0 + 0) / 6)
    x = torch.sigmoid((chosen - reject).double())
    assert out["fairness/jain"] == pytest.approx(float(x.sum() ** 2 / (6 * (x**2).sum())), rel=1e-9)
    assert out["fairness/F"] == pytest.approx(out["fairness/jain"], rel=1e-6)
    groups = torch.stack([x[ids == 0].mean(), x[ids == 1].mean()])
    assert out["fairness/F_groups"] == pytest.approx(float(groups.sum() ** 2 / (2 * (groups**2).sum())), rel=1e-9)


# ----------------------------------------------------------------------------------------------- the patched dataset
@pytest.fixture(scope="module")
def tokenizer():
    from openrlhf_fair.fixtures import build_tiny_tokenizer

    return build_tiny_tokenizer()


def rows(n=6):
    cats = ["helpful", "harmless", "helpful", "other", "harmless", "helpful"]
    return [
        {"prompt": f"Human: question {i}? Assistant:", "chosen": f" answer {i}", "rejected": f" no {i}", "category": cats[i % 6]}
        for i in range(n)
    ]


def make_dataset(host, tokenizer, data, packing=False):
    import datasets

    strategy = FakeStrategy(packing=packing)
    strategy.args.data = SimpleNamespace(prompt_key="prompt", chosen_key="chosen", rejected_key="rejected", apply_chat_template=False)
    return host.reward_dataset.RewardDataset(datasets.Dataset.from_list(data), tokenizer, 64, strategy, num_processors=None)


def test_group_labels_ride_along_without_changing_the_batch(host, tokenizer):
    from openrlhf_fair.features.labels import GroupTaggedExtras, apply_group_labels

    plain = make_dataset(host, tokenizer, rows())
    expected = plain.collate_fn([plain[i] for i in range(6)])
    undo = apply_group_labels("category")
    try:
        tagged = make_dataset(host, tokenizer, rows())
        batch = tagged.collate_fn([tagged[i] for i in range(6)])
    finally:
        undo()
    assert len(batch) == 5
    for ours, theirs in zip(batch[:4], expected[:4]):
        assert torch.equal(ours, theirs)
    assert isinstance(batch[4], GroupTaggedExtras) and list(batch[4]) == list(expected[4])
    assert batch[4].group_names == ["harmless", "helpful", "other"]
    assert batch[4].group_ids == [1, 0, 1, 2, 0, 1]
    assert len(plain[0]) == 5  # a dataset built without the patch is untouched


@pytest.mark.parametrize("packing, message", [(False, "has no column 'topic'"), (True, "packing_samples")])
def test_group_key_errors_come_before_processing(host, tokenizer, packing, message):
    from openrlhf_fair.errors import GroupKeyError
    from openrlhf_fair.features.labels import apply_group_labels

    undo = apply_group_labels("topic" if not packing else "category")
    try:
        with pytest.raises(GroupKeyError, match=message):
            make_dataset(host, tokenizer, rows(), packing=packing)
    finally:
        undo()


def test_group_labels_follow_the_rows_the_host_keeps(host, tokenizer):
    """DPO drops rows whose prompt is too long for max_length; the labels of the kept rows stay theirs."""
    import datasets

    from openrlhf_fair.features.labels import apply_group_labels

    data = rows()
    data[1]["prompt"] = "Human: " + "very long question " * 40 + "Assistant:"  # row 1 (harmless) is dropped
    strategy = FakeStrategy()
    strategy.args.data = SimpleNamespace(prompt_key="prompt", chosen_key="chosen", rejected_key="rejected", apply_chat_template=False)
    undo = apply_group_labels("category")
    try:
        dpo = host.reward_dataset.RewardDataset(datasets.Dataset.from_list(data), tokenizer, 64, strategy,
                                                is_dpo=True, num_processors=None)  # fmt: skip
    finally:
        undo()
    assert len(dpo) == 5 and dpo.fair_group_names == ["harmless", "helpful", "other"]
    assert [dpo.fair_group_names[i] for i in dpo.fair_group_ids] == ["helpful", "helpful", "other", "harmless", "helpful"]
    assert all(isinstance(extra, int) for extra in dpo.extras)  # the host's own prompt lengths, restored
