"""`FairPairWiseLoss`: OpenRLHF's pairwise reward-model loss plus the paper's fairness term.

Ouyang et al. (ACL 2025), "Towards Reward Fairness in RLHF": each preference pair's margin m = r(chosen) -
r(rejected) gives it a resource x = sigmoid(m / T), and the batch is scored with Lan et al.'s fairness
F = f_tau(x) / n (`openrlhf_fair.core.fairness`; tau = -1 gives Jain's index). With base = the host's loss
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
that case warns once (the host patch refuses micro-batches of one pair before training). A NaN/Inf base loss,
reward, host margin or F raises `FairnessTrainingError` naming the step. No side channels: group ids and the
step are call arguments, metrics are return values (`FairPairWiseLoss.fairness_loss`) or what the loss logs
(`extra_logs`, `eval_logs`). This module imports torch only, never openrlhf.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import torch
from torch import nn

from openrlhf_fair.errors import AddonError, FairnessInputError, FairnessTrainingError
from openrlhf_fair.settings import RewardFairnessConfig
from openrlhf_fair.core.fairness import exp_or_inf, fairness_sign, log_fairness, log_fairness_of_margins
from openrlhf_fair.core.measures import gini_coefficient, jain_index, pairwise_eval_metrics, row_group_means
from openrlhf_fair.core.reward_terms import extra_terms

__all__ = ["FairPairWiseLoss", "FairnessTrainingError", "RewardFairnessConfig"]



class FairPairWiseLoss(nn.Module):
    """Wraps a host pairwise loss ``base_loss(chosen_reward, reject_reward, margin)`` with the fairness term.

    Called like the host loss, plus ``group_ids=`` (an integer id per pair, needed with a group key) and
    ``step=`` (the host trainer's 1-based micro-step, to name it in errors; default: this loss's own count of
    training calls). Both reach it explicitly: `batch_inputs` tells the host trainer which to pass for a
    batch (OpenRLHF's loss-inputs hook point, `patches/`). ``process_group`` is the data-parallel group for
    scope "global" (None: the default group); ``steps_per_update`` is the gradient accumulation.

    Metrics: `fairness_loss` returns them with the loss. A training call keeps them in ``last_metrics`` and in
    the optimizer step's list that `extra_logs` averages (the step logs). A call without gradients (the host's
    evaluation) returns the host loss unchanged and keeps the pair rewards, which `eval_logs` turns into the
    eval metrics (`metrics.pairwise_eval_metrics`) and clears.
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
        self.last_metrics: dict[str, float] = {}
        self._step_metrics: list[dict[str, float]] = []  # the current optimizer step's training calls
        self._eval_pairs: list[tuple] = []  # (chosen, reject, group ids or None) of calls without gradients
        self._calls = 0
        self._warned_few_items = False

    def extra_repr(self) -> str:
        return self.config.describe()

    # ------------------------------------------------------------------------------------------- the host's calls
    def batch_inputs(self, batch, step: Optional[int] = None) -> dict:
        """Keyword arguments for this loss's call on the host batch ``batch`` (its 5th element carries the group
        ids with a group key, `host.labels`) at host micro-step ``step`` (None in evaluation)."""
        inputs = {} if step is None else {"step": step}
        if self.config.group_key is not None:
            group_ids = getattr(batch[4], "group_ids", None)
            if group_ids is None:
                raise FairnessTrainingError(
                    f"openrlhf-fair: --fairness_group_key {self.config.group_key} is set but the batch carries no "
                    "group labels (the dataset patch openrlhf_fair.features.labels did not reach this dataloader)"
                )
            inputs["group_ids"] = group_ids
        return inputs

    def forward(self, chosen_reward, reject_reward, margin=None, group_ids=None, step=None) -> torch.Tensor:
        base = self.base_loss(chosen_reward, reject_reward, margin)
        return self.add_fairness(base, chosen_reward, reject_reward, margin, group_ids, step)

    def add_fairness(self, base, chosen_reward, reject_reward, margin=None, group_ids=None, step=None) -> torch.Tensor:
        """``base`` (the host loss of these pairs) with the fairness term; keeps the metrics (see the class doc)."""
        ids = self._group_ids(group_ids, chosen_reward.numel(), chosen_reward.device)
        if not torch.is_grad_enabled():  # the host's evaluation: host loss only, pairs kept for eval_logs
            self._eval_pairs.append((chosen_reward.detach().reshape(-1).float(), reject_reward.detach().reshape(-1).float(), ids))
            return base
        self._calls += 1
        loss, metrics = self.fairness_loss(base, chosen_reward, reject_reward, margin, ids, self._calls if step is None else step)
        if len(self._step_metrics) == self.steps_per_update:
            self._step_metrics = []
        self._step_metrics.append(metrics)
        self.last_metrics = metrics
        return loss

    # ------------------------------------------------------------------------------------------- logs
    def extra_logs(self) -> dict[str, float]:
        """Mean of each step metric over the optimizer step's training calls so far (OpenRLHF's step logs)."""
        if not self._step_metrics:
            return {}
        n = len(self._step_metrics)
        return {key: sum(m[key] for m in self._step_metrics) / n for key in self._step_metrics[-1]}

    def eval_logs(self, gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t, group_names=None) -> dict:
        """Eval metrics of the pairs kept since the last call (``gather`` concatenates them over the data-parallel
        ranks, e.g. the host strategy's ``all_gather``); {} when there are none. Clears the kept pairs."""
        pairs, self._eval_pairs = self._eval_pairs, []
        if not pairs:
            return {}
        chosen, reject = (gather(torch.cat([p[i] for p in pairs])).cpu() for i in (0, 1))
        with_ids = group_names is not None and all(p[2] is not None for p in pairs)
        ids = gather(torch.cat([p[2] for p in pairs])).cpu() if with_ids else None
        try:
            return pairwise_eval_metrics(
                chosen, reject, tau=self.config.tau, temperature=self.config.temperature,
                group_ids=ids, group_names=group_names if with_ids else None,
            )  # fmt: skip
        except FairnessInputError as err:
            raise FairnessTrainingError(f"openrlhf-fair: evaluation: cannot compute the fairness metrics: {err}") from err

    # ------------------------------------------------------------------------------------------- the loss
    def fairness_loss(self, base, chosen_reward, reject_reward, margin=None, ids=None, step: int = 1):
        """(loss, metrics) of one training call: the pure computation, no state but the few-items warning."""
        self._check_finite(step, [("base loss", base), ("rewards", chosen_reward), ("rewards", reject_reward),
                                  ("margin", margin if isinstance(margin, torch.Tensor) else None)])
        if self.config.group_key is not None and ids is None:
            raise FairnessTrainingError(
                f"{self._where(step)}: --fairness_group_key {self.config.group_key} is set but the batch carries "
                "no group labels (the dataset patch openrlhf_fair.features.labels is not applied)"
            )
        extra, extra_metrics = extra_terms(chosen_reward, reject_reward, self.config, ids, gather=self._gather)
        margins, ids = self._gather((chosen_reward - reject_reward).reshape(-1), ids)
        method = self.config.method
        if method == "none":
            with torch.no_grad():
                log_f, x, n_items = self._log_fairness(margins.detach(), ids, step)
            loss, term = base, torch.zeros((), dtype=torch.float64)
        else:
            log_f, x, n_items = self._log_fairness(margins, ids, step)
            if method == "fr":
                term = self.config.reg * fairness_sign(self.config.tau) * log_f.exp()
                loss = (base - term).to(base.dtype)
            else:
                exponent = self.config.coef if self.config.coef_form == "paper" else -self.config.coef
                term = (exponent * log_f).exp()
                loss = (base * term).to(base.dtype)
        if extra is not None:  # issue 12's reward-level terms (openrlhf_fair.core.reward_terms); None when all are off
            loss = (loss + extra).to(base.dtype)
        log_f, term = float(log_f.detach()), float(term.detach())
        F = fairness_sign(self.config.tau) * exp_or_inf(log_f)
        if not (math.isfinite(F) and math.isfinite(term)):
            raise FairnessTrainingError(
                f"{self._where(step)}: fairness F = {F} (fairness term {term}) is not finite; margins range "
                f"[{float(margins.min()):.4g}, {float(margins.max()):.4g}]. Lower the learning rate, raise "
                "--fairness_temperature, or use tau < 1; stopping rather than training a NaN model."
            )
        x = x.detach()
        metrics = {
            "fairness/base_loss": float(base.detach()),
            "fairness/term": term,
            "fairness/F": F,
            "fairness/jain": jain_index(x),
            "fairness/gini": gini_coefficient(x),
            "fairness/items": float(n_items),
            **extra_metrics,
        }
        return loss, metrics

    def _check_finite(self, step: int, named: list) -> None:
        """A NaN/Inf base loss, reward or host margin stops the run naming the step (one device sync if all fine)."""
        named = [(name, t.detach()) for name, t in named if t is not None]
        if bool(torch.stack([torch.isfinite(t).all() for _, t in named]).all()):
            return
        bad = [name for name, t in named if not bool(torch.isfinite(t).all())]
        raise FairnessTrainingError(
            f"{self._where(step)}: NaN/Inf in the {', '.join(dict.fromkeys(bad))}; stopping rather than training a "
            "NaN model. Check the data (e.g. the margin column with --model.margin_loss_enable) and the learning rate."
        )

    def _group_ids(self, group_ids, n: int, device) -> Optional[torch.Tensor]:
        if group_ids is None:
            return None
        ids = torch.as_tensor(group_ids, dtype=torch.int64, device=device).reshape(-1)
        if ids.numel() != n:
            raise FairnessInputError(f"got {ids.numel()} group ids for {n} preference pairs")
        return ids

    def _where(self, micro_step: int) -> str:
        step = (micro_step - 1) // self.steps_per_update + 1
        return f"openrlhf-fair: at training step {step} (micro-step {micro_step})"

    def _log_fairness(
        self, margins: torch.Tensor, ids: Optional[torch.Tensor], step: int
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
                f"{self._where(step)}: fairness F is computed over {n_items} {what}(s); it needs at least "
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
            x_groups = row_group_means(x.unsqueeze(0), inverse.unsqueeze(0), n_items)[0][0]
            return log_fairness(x_groups, tau, normalize=True), x, n_items
        except FairnessInputError as err:
            raise FairnessTrainingError(f"{self._where(step)}: cannot compute fairness F: {err}") from err

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
