"""Fairness-aware reward-model training: OpenRLHF's RewardModelTrainer (openrlhf/trainer/rm_trainer.py).

`apply_fairness(config)` (called by the `openrlhf train_rm` runner only when a fairness flag is given) registers
the pairwise trainers' fairness hooks (`host.pairwise_trainer`) for RewardModelTrainer, with `FairPairWiseLoss`
around the host's PairWiseLoss / LogExpLoss (with or without margins).
"""

from __future__ import annotations

from typing import Callable

from openrlhf_fair.config import RewardFairnessConfig
from openrlhf_fair.host.pairwise_trainer import apply_to_trainer
from openrlhf_fair.host.patching import require_attribute
from openrlhf_fair.host.trainer_call_sites import WRAPPED_METHODS

PATCH_ID = "openrlhf_fair.rm_trainer"

__all__ = ["PATCH_ID", "WRAPPED_METHODS", "apply_fairness"]


def apply_fairness(config: RewardFairnessConfig) -> Callable[[], None]:
    """Hook RewardModelTrainer (and patch RewardDataset with a group key) for ``config``; return the undo.

    Applying the same config twice is harmless; a different config on top of an applied one is an error.
    """
    if not isinstance(config, RewardFairnessConfig):
        raise TypeError(f"apply_fairness needs a RewardFairnessConfig, got {type(config).__name__}")
    from openrlhf.trainer import rm_trainer as host

    cls = require_attribute(host, "RewardModelTrainer", "the reward-model trainer of train_rm")
    return apply_to_trainer(cls, config, PATCH_ID, "rm_loss")
