"""Settings of the fairness-aware pairwise losses (reward model `train_rm`, and `train_dpo`), validated once.

One frozen dataclass built by `openrlhf_fair.cli.flags` from the command line and handed to the host patches
and to `openrlhf_fair.losses.FairPairWiseLoss`; nothing reads a global config at run time. This module
imports neither torch nor openrlhf, so the flag parser stays cheap.

Methods (Ouyang et al., ACL 2025, "Towards Reward Fairness in RLHF"), F = f_tau(sigmoid(m / T)) / n:
- Fairness Regularization (FR, ``--fairness_reg ALPHA``): loss = base_loss - ALPHA * F.
- Fairness Coefficient (FC, ``--fairness_coef GAMMA``): loss = base_loss * F**GAMMA as published
  (form ``paper``, its gradient lowers F), or base_loss * F**(-GAMMA) (form ``inverse``, raises F).
- Neither given but another fairness flag (e.g. only ``--fairness_group_key``): the loss is the host's own
  (Bradley-Terry) and fairness is only measured and logged: a baseline to compare FR/FC against.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

COEF_FORMS = ("paper", "inverse")
SCOPES = ("micro", "global")


class FairnessConfigError(ValueError):
    """A fairness setting that cannot work (tau = 1, negative ALPHA/GAMMA, ...); the message names the flag."""


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise FairnessConfigError(f"{name} must be a finite number, got {value}")
    return value


@dataclass(frozen=True)
class RewardFairnessConfig:
    """Fairness settings of one pairwise-preference run. See the module docstring for the formulas."""

    alpha: Optional[float] = None  # --fairness_reg: FR weight
    gamma: Optional[float] = None  # --fairness_coef: FC exponent
    coef_form: str = "paper"  # --fairness_coef_form: paper (F**gamma) | inverse (F**-gamma)
    tau: float = -1.0  # --fairness_tau: Lan et al.'s tau; -1 gives Jain's index
    temperature: float = 1.0  # --fairness_temperature: x = sigmoid(margin / T)
    scope: str = "micro"  # --fairness_scope: micro (rank's micro-batch) | global (all data-parallel ranks)
    group_key: Optional[str] = None  # --fairness_group_key: F over per-group mean allocations

    def __post_init__(self) -> None:
        if self.alpha is not None and self.gamma is not None:
            raise FairnessConfigError(
                "--fairness_reg (FR) and --fairness_coef (FC) are two different methods: pass only one"
            )
        if self.alpha is not None and _finite("--fairness_reg", self.alpha) < 0:
            raise FairnessConfigError(f"--fairness_reg must be >= 0 (it is subtracted as -ALPHA * F), got {self.alpha}")
        if self.gamma is not None and _finite("--fairness_coef", self.gamma) < 0:
            raise FairnessConfigError(
                f"--fairness_coef must be >= 0, got {self.gamma}; for the fairness-raising variant use "
                "--fairness_coef_form inverse with a positive GAMMA"
            )
        if self.coef_form not in COEF_FORMS:
            raise FairnessConfigError(f"--fairness_coef_form must be one of {COEF_FORMS}, got {self.coef_form!r}")
        if self.coef_form != "paper" and self.gamma is None:
            raise FairnessConfigError("--fairness_coef_form only applies together with --fairness_coef GAMMA")
        tau = _finite("--fairness_tau", self.tau)
        if tau == 1.0:
            raise FairnessConfigError(
                "--fairness_tau 1 is degenerate (f_tau has the factor sign(1 - tau) = 0); use tau < 1 "
                "(default -1, Jain's index) or tau > 1"
            )
        if self.gamma is not None and tau > 1.0:
            raise FairnessConfigError(
                f"--fairness_coef needs --fairness_tau < 1: for tau > 1 (got {tau}) F is negative and F**GAMMA "
                "is undefined; use --fairness_reg for tau > 1"
            )
        temperature = _finite("--fairness_temperature", self.temperature)
        if temperature <= 0:
            raise FairnessConfigError(f"--fairness_temperature must be > 0, got {temperature}")
        if self.scope not in SCOPES:
            raise FairnessConfigError(f"--fairness_scope must be one of {SCOPES}, got {self.scope!r}")
        if self.group_key is not None and not str(self.group_key).strip():
            raise FairnessConfigError("--fairness_group_key must name a dataset column, got an empty string")

    @property
    def method(self) -> str:
        """'fr', 'fc' or 'none' (host loss unchanged; fairness measured and logged only)."""
        if self.alpha is not None:
            return "fr"
        if self.gamma is not None:
            return "fc"
        return "none"

    @property
    def min_items(self) -> int:
        """Fewest pairs (or groups) F needs for a nonzero gradient."""
        return 2

    def to_dict(self) -> dict:
        """JSON-ready settings, recorded in the saved model's config under ``openrlhf_fair``."""
        from openrlhf_fair import __version__

        return {"method": self.method, **asdict(self), "openrlhf_fair_version": __version__}

    def describe(self) -> str:
        if self.method == "fr":
            what = f"FR: loss = base - {self.alpha} * F"
        elif self.method == "fc":
            sign = "" if self.coef_form == "paper" else "-"
            what = f"FC ({self.coef_form}): loss = base * F**({sign}{self.gamma})"
        else:
            what = "no fairness term (host loss), fairness logged only"
        over = f"per-group mean allocations by '{self.group_key}'" if self.group_key else "pairs"
        return (
            f"{what}; F = f_tau(sigmoid(m / {self.temperature})) / n with tau = {self.tau}, over the {over} "
            f"of the {'micro-batch' if self.scope == 'micro' else 'data-parallel global micro-batch'}"
        )
