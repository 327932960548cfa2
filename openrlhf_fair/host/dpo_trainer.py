"""Fairness-aware DPO: wraps OpenRLHF's DPOTrainer (openrlhf/trainer/dpo_trainer.py).

`apply_fairness(config)` (called by the `openrlhf train_dpo` runner only when a fairness flag is given) applies
the reward-model trainer's wrappers (`openrlhf_fair.host.rm_trainer.apply_to_trainer`: ``__init__``, ``fit``,
``save_logs_and_checkpoints``, ``evaluate``, calling the originals every time) to DPOTrainer, with `FairDPOLoss`
around the host's DPOLoss (sigmoid, cDPO or IPO) so the fairness term is computed over DPO's implicit-reward
margins. So, as for train_rm: the run is checked before training (>= 2 pairs in the set F is computed over,
group key vs packing), the settings are recorded in the saved model's config, group labels are fed to the loss,
fairness metrics go into the host's step logs (progress bar, wandb, tensorboard), and evaluation logs
Jain/Gini/F of the implicit-reward margins (and per-group metrics with ``--fairness_group_key``, whose dataset
patch `openrlhf_fair.host.reward_dataset` serves DPO too).

On an OpenRLHF carrying the native hook points of `patches/`, the loss is installed through the native loss
hook instead (`openrlhf_fair.host.native_hooks`); the step logs then come from the host's own hook call.
"""

from __future__ import annotations

from typing import Callable

from openrlhf_fair.config import RewardFairnessConfig
from openrlhf_fair.host.patching import require_attribute
from openrlhf_fair.host.rm_trainer import WRAPPED_METHODS, apply_to_trainer

PATCH_ID = "openrlhf_fair.dpo_trainer"

__all__ = ["PATCH_ID", "WRAPPED_METHODS", "apply_fairness"]


def apply_fairness(config: RewardFairnessConfig) -> Callable[[], None]:
    """Patch DPOTrainer (and RewardDataset with a group key) for ``config``; return the undo function.

    Applying the same config twice is harmless; a different config on top of an applied one is an error.
    """
    if not isinstance(config, RewardFairnessConfig):
        raise TypeError(f"apply_fairness needs a RewardFairnessConfig, got {type(config).__name__}")
    from openrlhf.trainer import dpo_trainer as host

    from openrlhf_fair.dpo_losses import FairDPOLoss

    cls = require_attribute(host, "DPOTrainer", "the DPO trainer of train_dpo")
    return apply_to_trainer(cls, config, PATCH_ID, "dpo_loss", loss_class=FairDPOLoss)
