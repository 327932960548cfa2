"""`FairDPOLoss`: OpenRLHF's DPO loss plus the paper's fairness term over DPO's implicit-reward margins.

Ouyang et al. (ACL 2025) apply their two methods to DPO as well: each pair's implicit reward margin
    m_i = beta * [(log pi - log pi_ref)(chosen_i) - (log pi - log pi_ref)(rejected_i)]
(the quantity DPO pushes up, Rafailov et al. 2023 eq. 7) is the pair's resource, x_i = sigmoid(m_i / T), and with
base = the host's DPO loss exactly as OpenRLHF computes it (sigmoid DPO, label smoothing, or IPO):
    FR: loss = base - alpha * F        FC: loss = base * F**gamma  (or F**(-gamma), form "inverse")
with F = f_tau(x) / n. The fairness term itself is `openrlhf_fair.core.losses.FairPairWiseLoss` (group mode, scope,
NaN checks and metrics included) fed with the implicit rewards beta * (log pi - log pi_ref), so its margins are
the m_i above and its gradient reaches the policy's log-probabilities (the reference ones carry none).

Evaluation (the host calls the loss under `torch.no_grad()`) returns the host's DPO loss unchanged, so eval
loss stays comparable with plain DPO; the implicit rewards are kept for the eval metrics.
This module imports torch only, never openrlhf.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from openrlhf_fair.settings import RewardFairnessConfig
from openrlhf_fair.core.losses import FairPairWiseLoss

__all__ = ["FairDPOLoss", "implicit_rewards"]


def implicit_rewards(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward beta * (log pi - log pi_ref) of each sequence (Rafailov et al. 2023, eq. 5)."""
    return beta * (policy_logps - reference_logps)


class FairDPOLoss(FairPairWiseLoss):
    """Wraps a host ``DPOLoss``; called and returning like it: ``(loss, chosen_rewards, rejected_rewards)``.

    A `FairPairWiseLoss` whose pairs are scored by their implicit rewards and whose host loss is the DPO loss of
    the batch (`add_fairness`), so group ids, ``step``, `batch_inputs`, `extra_logs` and `eval_logs` work as for
    the reward model. ``beta`` defaults to the wrapped loss's own ``beta``.
    """

    def __init__(
        self,
        dpo_loss: nn.Module,
        config: RewardFairnessConfig,
        beta: Optional[float] = None,
        process_group=None,
        steps_per_update: int = 1,
    ) -> None:
        super().__init__(dpo_loss, config, process_group, steps_per_update)
        self.beta = float(dpo_loss.beta if beta is None else beta)

    @property
    def dpo_loss(self) -> nn.Module:
        return self.base_loss

    def extra_repr(self) -> str:
        return f"beta={self.beta}, {super().extra_repr()}"

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        reference_chosen_logps: torch.Tensor,
        reference_rejected_logps: torch.Tensor,
        group_ids=None,
        step=None,
    ):
        loss, chosen_rewards, rejected_rewards = self.base_loss(
            policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
        )
        loss = self.add_fairness(
            loss,
            implicit_rewards(policy_chosen_logps, reference_chosen_logps, self.beta),
            implicit_rewards(policy_rejected_logps, reference_rejected_logps, self.beta),
            group_ids=group_ids,
            step=step,
        )
        return loss, chosen_rewards, rejected_rewards
