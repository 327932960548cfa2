"""Fairness-aware DPO: OpenRLHF's DPOTrainer (openrlhf/trainer/dpo_trainer.py).

`apply_fairness(config)` (called by the `openrlhf train_dpo` runner only when a fairness flag is given) registers
the pairwise trainers' fairness hooks (`host.pairwise_trainer`, the same adapter as train_rm's) for DPOTrainer,
with `FairDPOLoss` around the host's DPOLoss (sigmoid, cDPO or IPO), so the fairness term and the metrics are
over DPO's implicit-reward margins. The group-key dataset patch `host.reward_dataset` serves DPO too.
"""

from __future__ import annotations

from typing import Callable

from openrlhf_fair.config import RewardFairnessConfig
from openrlhf_fair.host.pairwise_trainer import apply_to_trainer
from openrlhf_fair.host.patching import require_attribute
from openrlhf_fair.host.trainer_call_sites import WRAPPED_METHODS

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
