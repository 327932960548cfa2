"""Settings of the fairness-aware pairwise losses (reward model `train_rm`, and `train_dpo`), validated once.

One frozen dataclass built by `openrlhf_fair.cli.flags` from the command line and handed to the host patches
and to `openrlhf_fair.losses.FairPairWiseLoss`; nothing reads a global config at run time. This module
imports neither torch nor openrlhf, so the flag parser stays cheap.

Each setting is one field defined with `setting` (default, help text, choices); the flags are generated from the
fields. One vocabulary with `openrlhf_fair.ppo_config`: ``reg`` is the FR weight (the paper's alpha), ``coef`` the
FC exponent (the paper's gamma), then ``tau`` and ``temperature``.

Methods (Ouyang et al., ACL 2025, "Towards Reward Fairness in RLHF"), F = f_tau(sigmoid(m / T)) / n:
- Fairness Regularization (FR, ``--fairness_reg ALPHA``): loss = base_loss - ALPHA * F.
- Fairness Coefficient (FC, ``--fairness_coef GAMMA``): loss = base_loss * F**GAMMA as published
  (form ``paper``, its gradient lowers F), or base_loss * F**(-GAMMA) (form ``inverse``, raises F).
- Neither given but another fairness flag (e.g. only ``--fairness_group_key``): the loss is the host's own
  (Bradley-Terry) and fairness is only measured and logged: a baseline to compare FR/FC against.
- train_rm only, added to any of the above (`openrlhf_fair.reward_terms`): reward-level fairness
  (``--fairness_level_reg``, scale-free, temperature ``--fairness_level_temperature``) and two baselines on reward levels, ``--reward_centering`` and ``--batch_sum_reg``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Optional

COEF_FORMS = ("paper", "inverse")
SCOPES = ("micro", "global")


class AddonError(Exception):
    """Base of the add-on's errors a user can act on (a setting, the data, the host's version).

    The message says what is wrong and what to do; the `openrlhf` command prints it alone and exits 2 (the
    traceback only with OPENRLHF_FAIR_DEBUG=1 or ``openrlhf --debug``; see `openrlhf_fair.cli.runner`).
    """


class FairnessConfigError(AddonError, ValueError):
    """A fairness setting that cannot work (tau = 1, negative ALPHA/GAMMA, ...); the message names the flag."""


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise FairnessConfigError(f"{name} must be a finite number, got {value}")
    return value


def setting(default, help: str, *, metavar=None, choices=None, flag=None, deprecation_note: str = "",
            counterpart: str = "", commands=None):
    """A config field with everything its command-line flag needs (TRL style: the field is the one definition).

    help: what it does, the paper it comes from and a sensible value (`openrlhf_fair.cli.flags` appends the
    default). flag: the flag's full name when it is not ``--<FLAG_PREFIX><field name>`` (such a flag has no
    deprecated alias). deprecation_note: added to the one-time message printed when the deprecated alias is used.
    counterpart: what to pass instead when the flag is given to a subcommand that does not have it.
    commands: the subcommands that have the flag (None: all that use the config class).
    """
    metadata = {"help": help, "metavar": metavar, "choices": choices, "flag": flag, "deprecation_note": deprecation_note,
                "counterpart": counterpart, "commands": commands}
    return field(default=default, metadata=metadata)


FC_DIRECTION = (
    "On train_rm/train_dpo the coefficient is the published Fairness Coefficient, loss = base_loss * F**GAMMA, whose "
    "gradient LOWERS fairness (add --fairness_coef_form inverse for the form that raises it); on train_ppo_ray "
    "--fair_coef multiplies a utility that is maximised and RAISES fairness. One spelling per direction: "
    "--fairness_coef (train_rm/train_dpo), --fair_coef (train_ppo_ray)."
)


@dataclass(frozen=True)
class RewardFairnessConfig:
    """Fairness settings of one pairwise-preference run. See the module docstring for the formulas."""

    FLAG_PREFIX: ClassVar[str] = "fairness_"  # flags --fairness_<field>; --fair_<field> is the deprecated alias
    DEPRECATED_PREFIX: ClassVar[str] = "fair_"

    reg: Optional[float] = setting(
        None, "Fairness Regularization (FR): loss = base_loss - ALPHA * F. The paper uses 0.1; 1.0 shows an effect "
              "on small models.", metavar="ALPHA")
    coef: Optional[float] = setting(
        None, "Fairness Coefficient (FC) as published: loss = base_loss * F**GAMMA; its gradient LOWERS fairness "
              "(see --fairness_coef_form). The paper uses 0.5.", metavar="GAMMA", deprecation_note=FC_DIRECTION)
    coef_form: str = setting(
        "paper", "paper: F**GAMMA, whose gradient LOWERS fairness (as published); inverse: F**(-GAMMA), which "
                 "raises it.", choices=COEF_FORMS)
    tau: float = setting(
        -1.0, "Lan et al.'s tau of F = f_tau(x) / n: -1 gives Jain's index (the paper's value), -> 0 exp(Shannon "
              "entropy); tau = 1 is invalid.", metavar="TAU")
    temperature: float = setting(1.0, "Allocation x = sigmoid(margin / T); 1 as in the paper.", metavar="T")
    scope: str = setting(
        "micro", "micro: F over the rank's micro-batch (as the authors did); global: over the micro-batches of all "
                 "data-parallel ranks, gathered with gradients.", choices=SCOPES)
    group_key: Optional[str] = setting(
        None, "Dataset column (e.g. category): F over per-group mean allocations instead of per pair, and per-group "
              "accuracy / mean reward / best-minus-worst gap at evaluation. Not with --ds.packing_samples.",
        metavar="KEY", counterpart="--fair_unit label:KEY (agents = the prompts sharing a value of that column)")
    level_reg: Optional[float] = setting(
        None, "Reward-level fairness (the add-on's, after the paper's allocation view): loss += -LAMBDA * F_L, F_L = "
              "f_tau(sigmoid(z / T_L)) / n over the pairs' standardised reward levels z = (l - mean l) / std(l), "
              "l = (r_chosen + r_rejected) / 2, or over per-group mean allocations with --fairness_group_key (the "
              "intended use: it pulls the groups' reward levels together relative to their spread; margins are not "
              "touched directly). Scale-free: multiplying or shifting every reward leaves F_L unchanged, so the term "
              "cannot be met by shrinking the reward scale. Alone or with --fairness_reg/--fairness_coef. Try 1.0 "
              "with a group key.", metavar="LAMBDA", flag="--fairness_level_reg", commands=("train_rm",))
    level_temperature: float = setting(
        1.0, "Temperature T_L of the level allocation sigmoid(z / T_L), in units of the batch's level std (z is the "
             "standardised level): at 1 a level one std above the mean gets 0.73; smaller values make F_L more "
             "sensitive to the group gap. 1 is a sensible start.", metavar="T_L",
        flag="--fairness_level_temperature", commands=("train_rm",))
    reward_centering: Optional[float] = setting(
        None, "Reward centering (Eisenstein et al. 2023; TRL's center_rewards_coefficient): loss += COEF * "
              "mean((r_chosen + r_rejected)^2) over the micro-batch. TRL suggests 0.01.",
        metavar="COEF", flag="--reward_centering", commands=("train_rm",))
    batch_sum_reg: Optional[float] = setting(
        None, "Batch-sum regularisation (BSR, Hong et al., ICML 2025): loss += LAMBDA * B * mean(all 2B rewards of "
              "the micro-batch's B pairs)^2, pushing each batch's reward sum to zero. Start around 0.01 (not a value from the paper).",
        metavar="LAMBDA", flag="--batch_sum_reg", commands=("train_rm",))

    def __post_init__(self) -> None:
        if self.reg is not None and self.coef is not None:
            raise FairnessConfigError(
                "--fairness_reg (FR) and --fairness_coef (FC) are two different methods: pass only one"
            )
        if self.reg is not None and _finite("--fairness_reg", self.reg) < 0:
            raise FairnessConfigError(f"--fairness_reg must be >= 0 (it is subtracted as -ALPHA * F), got {self.reg}")
        if self.coef is not None and _finite("--fairness_coef", self.coef) < 0:
            raise FairnessConfigError(
                f"--fairness_coef must be >= 0, got {self.coef}; for the fairness-raising variant use "
                "--fairness_coef_form inverse with a positive GAMMA"
            )
        if self.coef_form not in COEF_FORMS:
            raise FairnessConfigError(f"--fairness_coef_form must be one of {COEF_FORMS}, got {self.coef_form!r}")
        if self.coef_form != "paper" and self.coef is None:
            raise FairnessConfigError("--fairness_coef_form only applies together with --fairness_coef GAMMA")
        tau = _finite("--fairness_tau", self.tau)
        if tau == 1.0:
            raise FairnessConfigError(
                "--fairness_tau 1 is degenerate (f_tau has the factor sign(1 - tau) = 0); use tau < 1 "
                "(default -1, Jain's index) or tau > 1"
            )
        if self.coef is not None and tau > 1.0:
            raise FairnessConfigError(
                f"--fairness_coef needs --fairness_tau < 1: for tau > 1 (got {tau}) F is negative and F**GAMMA "
                "is undefined; use --fairness_reg for tau > 1"
            )
        temperature = _finite("--fairness_temperature", self.temperature)
        if temperature <= 0:
            raise FairnessConfigError(f"--fairness_temperature must be > 0, got {temperature}")
        level_temperature = _finite("--fairness_level_temperature", self.level_temperature)
        if level_temperature <= 0:
            raise FairnessConfigError(f"--fairness_level_temperature must be > 0, got {level_temperature}")
        if self.scope not in SCOPES:
            raise FairnessConfigError(f"--fairness_scope must be one of {SCOPES}, got {self.scope!r}")
        for name, flag in (("level_reg", "--fairness_level_reg"), ("reward_centering", "--reward_centering"),
                           ("batch_sum_reg", "--batch_sum_reg")):
            value = getattr(self, name)
            if value is not None and _finite(flag, value) < 0:
                raise FairnessConfigError(f"{flag} must be >= 0 (a penalty weight), got {value}")
        if self.group_key is not None and not str(self.group_key).strip():
            raise FairnessConfigError("--fairness_group_key must name a dataset column, got an empty string")

    @property
    def method(self) -> str:
        """'fr', 'fc' or 'none' (host loss unchanged; fairness measured and logged only)."""
        if self.reg is not None:
            return "fr"
        if self.coef is not None:
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
            what = f"FR: loss = base - {self.reg} * F"
        elif self.method == "fc":
            sign = "" if self.coef_form == "paper" else "-"
            what = f"FC ({self.coef_form}): loss = base * F**({sign}{self.coef})"
        else:
            what = "loss = base (the host's)"
        extras = [text for text, value in (
            (f" - {self.level_reg} * F_L (reward-level fairness, allocation sigmoid(standardised level / "
             f"{self.level_temperature}))", self.level_reg),
            (f" + {self.reward_centering} * mean((r_c + r_r)^2) (reward centering)", self.reward_centering),
            (f" + {self.batch_sum_reg} * B * mean(r)^2 (batch-sum regularisation)", self.batch_sum_reg)) if value is not None]
        if self.method == "none" and not extras:
            what = "no fairness term (host loss), fairness logged only"
        over = f"per-group mean allocations by '{self.group_key}'" if self.group_key else "pairs"
        return (
            f"{what}{''.join(extras)}; F = f_tau(sigmoid(m / {self.temperature})) / n with tau = {self.tau}, over the "
            f"{over} of the {'micro-batch' if self.scope == 'micro' else 'data-parallel global micro-batch'}"
        )
