"""Settings of PPO fairness shaping (`openrlhf train_ppo_ray --fair_coef/--fair_reg ...`), validated once.

Built by `openrlhf_fair.cli.flags` from the command line, carried to OpenRLHF's Ray actors as a plain dict
(`to_payload`), and handed to `openrlhf_fair.shaping` by the experience-maker patch; nothing reads a global
config at run time. Imports neither torch nor openrlhf, so the flag parser stays cheap.
What the settings compute: `openrlhf_fair.shaping`; the derivation and the reasons for each bound: docs/ppo.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

from openrlhf_fair.config import FC_DIRECTION, FairnessConfigError, setting

UNITS = ("sample", "prompt", "label:KEY")
DEFAULT_WEIGHT_CLIP = (0.0, 5.0)


@dataclass(frozen=True)
class PPOFairnessConfig:
    """Psi = U * F**coef + reg * F over the rollout batch's agents (see `openrlhf_fair.shaping`).

    coef = reg = 0 (e.g. only --fair_unit given) is the measure-only mode: every weight is exactly 1, the
    advantages are bit-identical to OpenRLHF's, and the fairness metrics are still logged (a baseline).
    """

    FLAG_PREFIX: ClassVar[str] = "fair_"  # flags --fair_<field>; --fairness_<field> is the deprecated alias
    DEPRECATED_PREFIX: ClassVar[str] = "fairness_"

    coef: float = setting(
        0.0, "Psi = U * F**GAMMA (the paper's fairness coefficient, as a welfare to maximise: it RAISES fairness, "
             "unlike train_rm's --fairness_coef). 0.5 recommended (the paper's value).",
        metavar="GAMMA", deprecation_note=FC_DIRECTION)
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

    def __post_init__(self) -> None:
        for name in ("coef", "reg", "tau", "temperature"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise FairnessConfigError(f"--fair_{name} must be a finite number, got {value}")
            object.__setattr__(self, name, value)
        if self.coef < 0 or self.reg < 0:
            raise FairnessConfigError(
                f"--fair_coef ({self.coef}) and --fair_reg ({self.reg}) must be >= 0: negative values reward unfairness"
            )
        if self.tau == 1.0:
            raise FairnessConfigError("--fair_tau 1 is degenerate (f_tau has sign(1 - tau) = 0); use tau < 1 (default -1)")
        if self.coef > 0 and self.tau > 1:
            raise FairnessConfigError(
                f"--fair_coef with --fair_tau {self.tau} > 1 cannot be served: F is negative for tau > 1, so F**GAMMA "
                "is undefined; use tau < 1, or --fair_reg alone"
            )
        if self.temperature <= 0:
            raise FairnessConfigError(f"--fair_temperature must be > 0, got {self.temperature}")
        unit = str(self.unit)
        if unit not in ("sample", "prompt") and not (unit.startswith("label:") and unit[len("label:"):].strip()):
            raise FairnessConfigError(
                f"--fair_unit must be sample, prompt or label:KEY (KEY: a column of the prompt dataset), got {unit!r}"
            )
        object.__setattr__(self, "unit", unit)
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
        return ("PPO fairness shaping: " if self.enabled else "PPO fairness (measure only): ") + ", ".join(parts)

    def to_payload(self) -> dict:
        """Plain dict (picklable anywhere, e.g. into Ray actors); `from_payload` inverts it."""
        payload = asdict(self)
        payload["weight_clip"] = list(self.weight_clip)
        return payload

    @classmethod
    def from_payload(cls, payload: dict) -> "PPOFairnessConfig":
        return cls(**payload)
