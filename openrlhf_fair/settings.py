"""Every fairness setting, defined once: the pairwise losses' `RewardFairnessConfig` and PPO's
`PPOFairnessConfig`. Flags (`openrlhf_fair.cli.flags`) and configs derive from these fields.

Settings of the fairness-aware pairwise losses (reward model `train_rm`, and `train_dpo`), validated once.

One frozen dataclass built by `openrlhf_fair.cli.flags` from the command line and handed to the host patches
and to `openrlhf_fair.core.losses.FairPairWiseLoss`; nothing reads a global config at run time. This module
imports neither torch nor openrlhf, so the flag parser stays cheap.

Each setting is one field defined with `setting` (default, help text, choices); the flags are generated from the
fields. One vocabulary with `openrlhf_fair.settings`: ``reg`` is the FR weight (the paper's alpha), ``coef`` the
FC exponent (the paper's gamma), then ``tau`` and ``temperature``.

Methods (Ouyang et al., ACL 2025, "Towards Reward Fairness in RLHF"), F = f_tau(sigmoid(m / T)) / n:
- Fairness Regularization (FR, ``--fairness_reg ALPHA``): loss = base_loss - ALPHA * F.
- Fairness Coefficient (FC, ``--fairness_coef GAMMA``): loss = base_loss * F**GAMMA as published
  (form ``paper``, its gradient lowers F), or base_loss * F**(-GAMMA) (form ``inverse``, raises F).
- Neither given but another fairness flag (e.g. only ``--fairness_group_key``): the loss is the host's own
  (Bradley-Terry) and fairness is only measured and logged: a baseline to compare FR/FC against.
- train_rm only, added to any of the above (`openrlhf_fair.core.reward_terms`): reward-level fairness
  (``--fairness_level_reg``, scale-free, temperature ``--fairness_level_temperature``) and two baselines on reward levels, ``--reward_centering`` and ``--batch_sum_reg``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Optional
from openrlhf_fair.errors import FairnessConfigError

COEF_FORMS = ("paper", "inverse")
SCOPES = ("micro", "global")


def _finite(name: str, value: float, error: type[Exception] = FairnessConfigError) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise error(f"{name} must be finite, got {value}")
    return value


def check_tau(tau: float, name: str, error: type[Exception] = FairnessConfigError) -> float:
    """tau as a float, refused when not finite or 1 (f_tau has the factor sign(1 - tau) = 0): the one tau check
    (the settings of every command, and `core.fairness` with `FairnessInputError`)."""
    tau = _finite(name, tau, error)
    if tau == 1.0:
        raise error(f"{name} 1 is degenerate (f_tau at tau = 1 has the factor sign(1 - tau) = 0); use tau < 1 "
                    "(default -1, Jain's index) or tau > 1")
    return tau


def check_temperature(temperature: float, name: str, error: type[Exception] = FairnessConfigError) -> float:
    """A temperature as a float, refused unless finite and > 0: the one temperature check."""
    temperature = _finite(name, temperature, error)
    if temperature <= 0:
        raise error(f"{name} must be > 0, got {temperature}")
    return temperature


def setting(default, help: str, *, metavar=None, choices=None, flag=None, counterpart: str = "", commands=None):
    """A config field with everything its command-line flag needs (TRL style: the field is the one definition).

    help: what it does, the paper it comes from and a sensible value (`openrlhf_fair.cli.flags` appends the
    default). flag: the flag's full name when it is not ``--<FLAG_PREFIX><field name>``.
    counterpart: what to pass instead when the flag is given to a subcommand that does not have it.
    commands: the subcommands that have the flag (None: all that use the config class).
    """
    metadata = {"help": help, "metavar": metavar, "choices": choices, "flag": flag, "counterpart": counterpart,
                "commands": commands}
    return field(default=default, metadata=metadata)


# The fairness coefficient points opposite ways on the two sides; a flag of one side given to the other is refused
# with these words (`counterpart`: what to pass instead).
FC_ON_PPO = ("--fair_coef GAMMA, which multiplies a utility that is maximised: on train_ppo_ray the coefficient "
             "RAISES fairness")
FC_ON_PAIRWISE = ("--fairness_coef GAMMA, the published Fairness Coefficient loss = base_loss * F**GAMMA, whose "
                  "gradient LOWERS fairness (add --fairness_coef_form inverse for the form that raises it)")


@dataclass(frozen=True)
class RewardFairnessConfig:
    """Fairness settings of one pairwise-preference run. See the module docstring for the formulas."""

    FLAG_PREFIX: ClassVar[str] = "fairness_"  # flags --fairness_<field> (train_ppo_ray's are --fair_<field>)

    reg: Optional[float] = setting(
        None, "Fairness Regularization (FR): loss = base_loss - ALPHA * F. The paper uses 0.1; 1.0 shows an effect "
              "on small models.", metavar="ALPHA")
    coef: Optional[float] = setting(
        None, "Fairness Coefficient (FC) as published: loss = base_loss * F**GAMMA; its gradient LOWERS fairness "
              "(see --fairness_coef_form). The paper uses 0.5.", metavar="GAMMA", counterpart=FC_ON_PPO)
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
        tau = check_tau(self.tau, "--fairness_tau")
        if self.coef is not None and tau > 1.0:
            raise FairnessConfigError(
                f"--fairness_coef needs --fairness_tau < 1: for tau > 1 (got {tau}) F is negative and F**GAMMA "
                "is undefined; use --fairness_reg for tau > 1"
            )
        check_temperature(self.temperature, "--fairness_temperature")
        check_temperature(self.level_temperature, "--fairness_level_temperature")
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


# --------------------------------------------------------------------------------------------------
# PPO: Settings of PPO fairness shaping (`openrlhf train_ppo_ray --fair_coef/--fair_reg ...`), validated once.
#
# Built by `openrlhf_fair.cli.flags` from the command line, carried to OpenRLHF's Ray actors as a plain dict
# (`to_payload`), and handed to `openrlhf_fair.core.shaping` by the experience-maker patch; nothing reads a global
# config at run time. Imports neither torch nor openrlhf, so the flag parser stays cheap.
# What the settings compute: `openrlhf_fair.core.shaping`; the derivation and the reasons for each bound: docs/ppo.md.
# --------------------------------------------------------------------------------------------------

UNITS = ("sample", "prompt", "label:KEY")
DEFAULT_WEIGHT_CLIP = (0.0, 5.0)


@dataclass(frozen=True)
class PPOFairnessConfig:
    """Psi = U * F**coef + reg * F over the rollout batch's agents (see `openrlhf_fair.core.shaping`).

    coef = reg = 0 (e.g. only --fair_unit given) is the measure-only mode: every weight is exactly 1, the
    advantages are bit-identical to OpenRLHF's, and the fairness metrics are still logged (a baseline).
    """

    FLAG_PREFIX: ClassVar[str] = "fair_"  # flags --fair_<field> (train_rm's and train_dpo's are --fairness_<field>)

    coef: float = setting(
        0.0, "Psi = U * F**GAMMA (the paper's fairness coefficient, as a welfare to maximise: it RAISES fairness, "
             "unlike train_rm's --fairness_coef). 0.5 recommended (the paper's value).",
        metavar="GAMMA", counterpart=FC_ON_PAIRWISE)
    reg: float = setting(
        0.0, "Psi = U + ALPHA * F (the paper's fairness regularisation). The paper uses 0.1; 0.5-1 for a visible "
             "effect. With --fair_coef too: Psi = U * F**GAMMA + ALPHA * F.", metavar="ALPHA")
    tau: float = setting(
        -1.0, "Lan et al.'s tau (-1: Jain's index, the paper's value; -> 0: exp(Shannon entropy); 1 is invalid; "
              "> 1 only with --fair_reg).", metavar="TAU")
    temperature: float = setting(
        1.0, "x = sigmoid(reward / T); use about the reward's spread for rewards far from [-5, 5].", metavar="T")
    unit: str = setting(
        "sample", "Who the agents are: sample (like the paper's pairs), prompt (the n samples of one prompt, x = "
                  "their mean), or label:KEY (prompts sharing the value of prompt-dataset column KEY; logs mean "
                  "reward per label).", metavar="UNIT",
        counterpart="--fairness_group_key KEY (F over per-group mean allocations)")
    weight_clip: tuple[float, float] = setting(
        DEFAULT_WEIGHT_CLIP, "Clip the weights to [LOW, HIGH] before renormalising to mean 1 (0 5: never flip an "
                             "advantage's sign; at most 5x for one agent).", metavar=("LOW", "HIGH"))
    history: float = setting(
        0.0, "Weights from each agent's allocation averaged over rollout batches (exponential moving average: "
             "m = DECAY * m + (1 - DECAY) * x, per label with --fair_unit label:KEY, per prompt text with prompt), "
             "so a group under-rewarded batch after batch keeps its weight through one lucky batch; the adaptive "
             "group reweighting of APPA. 0 (off): each batch alone. 0.9 remembers about 10 batches.",
        metavar="DECAY")

    def __post_init__(self) -> None:
        for name in ("coef", "reg", "tau", "temperature", "history"):
            object.__setattr__(self, name, _finite(f"--fair_{name}", getattr(self, name)))
        if self.coef < 0 or self.reg < 0:
            raise FairnessConfigError(
                f"--fair_coef ({self.coef}) and --fair_reg ({self.reg}) must be >= 0: negative values reward unfairness"
            )
        check_tau(self.tau, "--fair_tau")
        if self.coef > 0 and self.tau > 1:
            raise FairnessConfigError(
                f"--fair_coef with --fair_tau {self.tau} > 1 cannot be served: F is negative for tau > 1, so F**GAMMA "
                "is undefined; use tau < 1, or --fair_reg alone"
            )
        check_temperature(self.temperature, "--fair_temperature")
        unit = str(self.unit)
        if unit not in ("sample", "prompt") and not (unit.startswith("label:") and unit[len("label:"):].strip()):
            raise FairnessConfigError(
                f"--fair_unit must be sample, prompt or label:KEY (KEY: a column of the prompt dataset), got {unit!r}"
            )
        object.__setattr__(self, "unit", unit)
        if not 0.0 <= self.history < 1.0:
            raise FairnessConfigError(f"--fair_history must be in [0, 1) (0: off; 0.9 remembers about 10 batches), "
                                      f"got {self.history}")
        if self.history and unit == "sample":
            raise FairnessConfigError("--fair_history needs agents that come back in later batches: pass --fair_unit "
                                      "label:KEY or --fair_unit prompt (each sample is a new agent)")
        clip = tuple(float(v) for v in self.weight_clip)
        if len(clip) != 2 or not all(math.isfinite(v) for v in clip) or not (0.0 <= clip[0] <= 1.0 <= clip[1] and clip[0] < clip[1]):
            raise FairnessConfigError(
                "--fair_weight_clip LOW HIGH needs finite 0 <= LOW <= 1 <= HIGH with LOW < HIGH (weights never flip an "
                f"advantage's sign, and w = 1 stays possible), got {tuple(self.weight_clip)}"
            )
        object.__setattr__(self, "weight_clip", clip)

    @property
    def enabled(self) -> bool:
        """Whether shaping changes anything (GAMMA or ALPHA nonzero); else the run only measures fairness."""
        return self.coef != 0.0 or self.reg != 0.0

    @property
    def label_key(self) -> str | None:
        """The prompt dataset column for ``label:KEY``, else None."""
        return self.unit[len("label:"):] if self.unit.startswith("label:") else None

    def describe(self) -> str:
        parts = [f"fair_coef={self.coef:g}", f"fair_reg={self.reg:g}", f"tau={self.tau:g}", f"T={self.temperature:g}",
                 f"unit={self.unit}", f"clip=[{self.weight_clip[0]:g}, {self.weight_clip[1]:g}]"]
        if self.history:
            parts.append(f"history={self.history:g}")
        return ("PPO fairness shaping: " if self.enabled else "PPO fairness (measure only): ") + ", ".join(parts)

    def to_payload(self) -> dict:
        """Plain dict (picklable anywhere, e.g. into Ray actors); `from_payload` inverts it."""
        payload = asdict(self)
        payload["weight_clip"] = list(self.weight_clip)
        return payload

    @classmethod
    def from_payload(cls, payload: dict) -> "PPOFairnessConfig":
        return cls(**payload)
