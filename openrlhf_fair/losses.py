"""`FairPairWiseLoss`: OpenRLHF's pairwise reward-model loss plus the paper's fairness term.

Ouyang et al. (ACL 2025), "Towards Reward Fairness in RLHF": each preference pair's margin m = r(chosen) -
r(rejected) gives it a resource x = sigmoid(m / T), and the batch is scored with Lan et al.'s fairness
F = f_tau(x) / n (`openrlhf_fair.fairness`; tau = -1 gives Jain's index). With base = the host's loss
(PairWiseLoss / LogExpLoss, with or without margins, exactly as OpenRLHF computes it):

- Fairness Regularization (FR, paper eq. for L_FR):   loss = base - alpha * F
- Fairness Coefficient  (FC, paper eq. for L_FC):     loss = base * F**gamma       (form "paper")
  Its gradient lowers F (a smaller F shrinks the product); form "inverse", base * F**(-gamma), raises it.
- Group mode (a group label per pair): F over the per-group mean allocations x_g = mean_{i in g} x_i of the
  groups present, so the term equalises groups (e.g. helpful vs harmless) rather than single pairs.
- Scope "global": the margins (and labels) of all data-parallel ranks are gathered with gradients
  (torch.distributed.nn.functional.all_gather) so F covers the global micro-batch; "micro" is per rank, as
  the authors did.

F needs at least 2 items (pairs, or groups in group mode): with one item it is a constant with zero gradient;
that case warns once (the host patch refuses micro-batches of one pair before training). A NaN/Inf F raises
`FairnessTrainingError` naming the step. This module imports torch only, never openrlhf.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import torch
from torch import nn

from openrlhf_fair.config import RewardFairnessConfig
from openrlhf_fair.fairness import FairnessInputError, exp_or_inf, fairness_sign, log_fairness, log_fairness_of_margins
from openrlhf_fair.metrics import gini_coefficient, jain_index

__all__ = ["FairPairWiseLoss", "FairnessTrainingError", "RewardFairnessConfig"]

# Names of the per-step metrics, as logged (the host prefixes train/ or eval/).
METRIC_NAMES = ("fair_base_loss", "fair_term", "fair_F", "fair_jain", "fair_gini", "fair_items")


class FairnessTrainingError(RuntimeError):
    """The fairness term became NaN/Inf (or could not be computed) during training; the message names the step."""


class FairPairWiseLoss(nn.Module):
    """Wraps a host pairwise loss ``base_loss(chosen_reward, reject_reward, margin)`` with the fairness term.

    Called like the host loss. Group labels (integer ids, one per pair) come either as ``group_ids=`` or from
    `set_batch_group_ids` just before the call (the host trainer passes only three arguments).
    ``process_group`` is the data-parallel group for scope "global" (None: the default group).
    ``steps_per_update`` (gradient accumulation) only serves to name the global step in error messages.
    After each training call `last_metrics` holds floats named as in `METRIC_NAMES`.
    """

    def __init__(
        self,
        base_loss: Callable[..., torch.Tensor],
        config: RewardFairnessConfig,
        process_group=None,
        steps_per_update: int = 1,
    ) -> None:
        super().__init__()
        if not isinstance(config, RewardFairnessConfig):
            raise TypeError(f"config must be a RewardFairnessConfig, got {type(config).__name__}")
        self.base_loss = base_loss
        self.config = config
        self.process_group = process_group
        self.steps_per_update = max(1, int(steps_per_update))
        self.micro_step = 0  # training calls so far (the host's micro-step counter, 0-based before the call)
        self.last_metrics: dict[str, float] = {}
        self._window_sums: dict[str, float] = {}
        self._window_count = 0
        self._pending_group_ids: Optional[torch.Tensor] = None
        self._eval_records: Optional[dict[str, list]] = None
        self._warned_few_items = False

    def extra_repr(self) -> str:
        return self.config.describe()

    # ------------------------------------------------------------------------------------------- inputs
    def set_batch_group_ids(self, group_ids) -> None:
        """Group ids of the pairs of the next call (consumed by it)."""
        self._pending_group_ids = None if group_ids is None else torch.as_tensor(group_ids, dtype=torch.int64)

    def _group_ids_for(self, group_ids, n: int, device) -> Optional[torch.Tensor]:
        if group_ids is None:
            group_ids, self._pending_group_ids = self._pending_group_ids, None
        if group_ids is None:
            return None
        ids = torch.as_tensor(group_ids, dtype=torch.int64, device=device).reshape(-1)
        if ids.numel() != n:
            raise FairnessInputError(f"got {ids.numel()} group ids for {n} preference pairs")
        return ids

    # ------------------------------------------------------------------------------------------- evaluation
    def start_eval_recording(self) -> None:
        """From now on return the host loss only and record rewards (and group ids) for evaluation metrics."""
        self._eval_records = {"chosen": [], "reject": [], "group_ids": []}

    def stop_eval_recording(self) -> dict[str, Optional[torch.Tensor]]:
        """Stop recording; return the recorded chosen/reject rewards (float32) and group ids (or None)."""
        records, self._eval_records = self._eval_records or {"chosen": [], "reject": [], "group_ids": []}, None
        cat = lambda parts, dtype: torch.cat(parts).to(dtype) if parts else None  # noqa: E731
        return {
            "chosen": cat(records["chosen"], torch.float32),
            "reject": cat(records["reject"], torch.float32),
            "group_ids": cat(records["group_ids"], torch.int64),
        }

    # ------------------------------------------------------------------------------------------- metrics
    def pop_window_metrics(self) -> dict[str, float]:
        """Mean of each metric over the training calls since the last pop (one optimizer step's micro-batches)."""
        if not self._window_count:
            return {}
        means = {k: v / self._window_count for k, v in self._window_sums.items()}
        self._window_sums, self._window_count = {}, 0
        return means

    def extra_logs(self) -> dict[str, float]:
        """The last training call's metrics, for OpenRLHF's native loss hook (`patches/`): step logs."""
        return dict(self.last_metrics)

    def _record(self, metrics: dict[str, float]) -> None:
        self.last_metrics = metrics
        for k, v in metrics.items():
            self._window_sums[k] = self._window_sums.get(k, 0.0) + v
        self._window_count += 1

    # ------------------------------------------------------------------------------------------- the loss
    def forward(self, chosen_reward, reject_reward, margin=None, group_ids=None) -> torch.Tensor:
        base = self.base_loss(chosen_reward, reject_reward, margin)
        if self._eval_records is None and not torch.is_grad_enabled():
            return base  # the host's evaluate without the recording wrapper (native loss hook): host loss only
        ids = self._group_ids_for(group_ids, chosen_reward.numel(), chosen_reward.device)
        if self._eval_records is not None:
            self._eval_records["chosen"].append(chosen_reward.detach().reshape(-1).float())
            self._eval_records["reject"].append(reject_reward.detach().reshape(-1).float())
            if ids is not None:
                self._eval_records["group_ids"].append(ids)
            return base

        self.micro_step += 1
        if self.config.group_key is not None and ids is None:
            raise FairnessTrainingError(
                f"{self._where()}: --fairness_group_key {self.config.group_key} is set but the batch carries no "
                "group labels (the dataset patch openrlhf_fair.host.reward_dataset is not applied)"
            )
        margins = (chosen_reward - reject_reward).reshape(-1)
        margins, ids = self._gather(margins, ids)
        method = self.config.method
        if method == "none":
            with torch.no_grad():
                log_f, x, n_items = self._log_fairness(margins.detach(), ids)
            loss, term = base, torch.zeros((), dtype=torch.float64)
        else:
            log_f, x, n_items = self._log_fairness(margins, ids)
            if method == "fr":
                term = self.config.reg * fairness_sign(self.config.tau) * log_f.exp()
                loss = (base - term).to(base.dtype)
            else:
                exponent = self.config.coef if self.config.coef_form == "paper" else -self.config.coef
                term = (exponent * log_f).exp()
                loss = (base * term).to(base.dtype)
        log_f, term = float(log_f.detach()), float(term.detach())
        F = fairness_sign(self.config.tau) * exp_or_inf(log_f)
        if not (math.isfinite(F) and math.isfinite(term)):
            raise FairnessTrainingError(
                f"{self._where()}: fairness F = {F} (fairness term {term}) is not finite; margins range "
                f"[{float(margins.min()):.4g}, {float(margins.max()):.4g}]. Lower the learning rate, raise "
                "--fairness_temperature, or use tau < 1; stopping rather than training a NaN model."
            )
        x = x.detach()
        self._record(
            {
                "fair_base_loss": float(base.detach()),
                "fair_term": term,
                "fair_F": F,
                "fair_jain": jain_index(x),
                "fair_gini": gini_coefficient(x),
                "fair_items": float(n_items),
            }
        )
        return loss

    def _where(self) -> str:
        step = (self.micro_step - 1) // self.steps_per_update + 1
        return f"openrlhf-fair: at training step {step} (micro-step {self.micro_step})"

    def _log_fairness(
        self, margins: torch.Tensor, ids: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(log|F| as a float64 scalar, per-pair allocations x, number of items F is over). F over pairs, or
        over group means with ids."""
        tau, temperature = self.config.tau, self.config.temperature
        if ids is None:
            inverse, n_items = None, margins.numel()
        else:
            groups, inverse = torch.unique(ids, return_inverse=True)
            n_items = groups.numel()
        if n_items < self.config.min_items and not self._warned_few_items:
            self._warned_few_items = True
            what = "pair" if ids is None else "group"
            warnings.warn(
                f"{self._where()}: fairness F is computed over {n_items} {what}(s); it needs at least "
                f"{self.config.min_items} for a nonzero gradient, so the fairness term does nothing for such "
                "batches (raise --train.micro_batch_size or use --fairness_scope global). Warned once.",
                RuntimeWarning,
                stacklevel=3,
            )
        try:
            m64 = margins.to(torch.float64)
            x = torch.sigmoid(m64 / temperature)
            if inverse is None:
                return log_fairness_of_margins(m64, tau, temperature, normalize=True), x, n_items
            counts = torch.bincount(inverse, minlength=n_items).to(torch.float64)
            sums = torch.zeros(n_items, dtype=torch.float64, device=x.device).index_add(0, inverse, x)
            return log_fairness(sums / counts, tau, normalize=True), x, n_items
        except FairnessInputError as err:
            raise FairnessTrainingError(f"{self._where()}: cannot compute fairness F: {err}") from err

    def _gather(self, margins: torch.Tensor, ids: Optional[torch.Tensor]):
        """Scope "global": concatenate every data-parallel rank's margins (with gradients) and group ids."""
        if self.config.scope != "global":
            return margins, ids
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return margins, ids  # a single process: the global batch is the micro-batch
        from torch.distributed.nn.functional import all_gather as all_gather_with_grad

        gathered = torch.cat(all_gather_with_grad(margins, group=self.process_group))
        if ids is not None:
            parts = [torch.empty_like(ids) for _ in range(dist.get_world_size(self.process_group))]
            dist.all_gather(parts, ids, group=self.process_group)
            ids = torch.cat(parts)
        return gathered, ids
