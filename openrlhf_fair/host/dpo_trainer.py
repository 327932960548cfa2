"""Fairness-aware DPO: wraps OpenRLHF's DPOTrainer (openrlhf/trainer/dpo_trainer.py).

`apply_fairness(config)` (called by the `openrlhf train_dpo` runner only when a fairness flag is given) wraps,
calling the originals every time:
- ``__init__``: checks the run (>= 2 pairs in the set F is computed over, group key vs packing) before training,
  replaces ``self.loss_fn`` (the host's DPOLoss: sigmoid, cDPO or IPO) by `FairDPOLoss`, whose fairness term is
  computed over DPO's implicit-reward margins, and records the settings in the saved model's config;
- ``fit``, ``save_logs_and_checkpoints``, ``evaluate``: exactly the reward-model trainer's wrappers
  (`openrlhf_fair.host.rm_trainer`): group labels fed to the loss, fairness metrics in the host's step logs
  (progress bar, wandb, tensorboard), eval Jain/Gini/F of the implicit-reward margins and per-group metrics.
With ``--fairness_group_key`` the dataset patch `openrlhf_fair.host.reward_dataset` is applied too.

On an OpenRLHF carrying the native hook points of `patches/`, the loss is installed through the native loss hook
instead (`openrlhf_fair.host.native_hooks`); there the step logs come from the host's own hook call, and the
features without a hook point (group labels, eval fairness metrics) are the runtime patches' only.
"""

from __future__ import annotations

import functools
from typing import Callable

from openrlhf_fair.config import FairnessConfigError, RewardFairnessConfig
from openrlhf_fair.host import native_hooks
from openrlhf_fair.host.patching import is_patched, patch_attribute, require_attribute
from openrlhf_fair.host.rm_trainer import (
    CONFIG_ATTR,
    SAVED_CONFIG_KEY,
    _bind,
    _process_group,
    _wrap_evaluate,
    _wrap_fit,
    _wrap_save_logs,
    check_run,
)

PATCH_ID = "openrlhf_fair.dpo_trainer"
WRAPPED_METHODS = ("__init__", "fit", "save_logs_and_checkpoints", "evaluate")


def fair_dpo_loss(trainer, loss_fn, config: RewardFairnessConfig):
    """`FairDPOLoss` around the trainer's DPOLoss, the settings recorded in the model config (both paths)."""
    from openrlhf_fair.dpo_losses import FairDPOLoss

    strategy = trainer.strategy
    fair = FairDPOLoss(
        loss_fn,
        config,
        process_group=_process_group(config, strategy),
        steps_per_update=getattr(strategy, "accumulated_gradient", 1),
    )
    strategy._unwrap_model(trainer.model).config.update({SAVED_CONFIG_KEY: config.to_dict()})
    strategy.print(f"openrlhf-fair (DPO, beta = {fair.beta}): {config.describe()}")
    return fair


def _wrap_init(config: RewardFairnessConfig):
    def make(original):
        @functools.wraps(original)
        def __init__(self, *args, **kwargs):
            check_run(config, _bind(original, self, *args, **kwargs).arguments["strategy"])
            original(self, *args, **kwargs)
            self.loss_fn = fair_dpo_loss(self, self.loss_fn, config)

        return __init__

    return make


def _native_loss_hook(config: RewardFairnessConfig):
    def wrap_loss(trainer, loss_fn):
        check_run(config, trainer.strategy)
        return fair_dpo_loss(trainer, loss_fn, config)

    return wrap_loss


def apply_fairness(config: RewardFairnessConfig) -> Callable[[], None]:
    """Patch DPOTrainer (and RewardDataset with a group key) for ``config``; return the undo function.

    Applying the same config twice is harmless; a different config on top of an applied one is an error.
    """
    if not isinstance(config, RewardFairnessConfig):
        raise TypeError(f"apply_fairness needs a RewardFairnessConfig, got {type(config).__name__}")
    from openrlhf.trainer import dpo_trainer as host

    cls = require_attribute(host, "DPOTrainer", "the DPO trainer of train_dpo")
    if native_hooks.use_native_hook("dpo_loss"):
        if config.group_key is not None:
            native_hooks.require_runtime_patching("--fairness_group_key (group labels from the dataset)")
        return native_hooks.register_loss_hook(cls, _native_loss_hook(config), f"{PATCH_ID}.loss")

    for name in WRAPPED_METHODS:
        require_attribute(cls, name, "DPOTrainer method wrapped by openrlhf-fair")
    if is_patched(cls, "__init__", f"{PATCH_ID}.__init__"):
        applied = getattr(cls.__init__, CONFIG_ATTR, None)
        if applied != config:
            raise FairnessConfigError(f"DPOTrainer is already patched with another config: {applied}")

    makers = {
        "__init__": _wrap_init(config),
        "fit": _wrap_fit(config),
        "save_logs_and_checkpoints": _wrap_save_logs(config),
        "evaluate": _wrap_evaluate(config),
    }

    def tagged(make):
        def build(original):
            replacement = make(original)
            setattr(replacement, CONFIG_ATTR, config)
            return replacement

        return build

    undos = [patch_attribute(cls, name, tagged(make), f"{PATCH_ID}.{name}") for name, make in makers.items()]
    if config.group_key is not None:
        from openrlhf_fair.host.reward_dataset import apply_group_labels

        undos.append(apply_group_labels(config.group_key))

    def undo() -> None:
        for step in reversed(undos):
            step()

    return undo
