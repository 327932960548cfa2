"""The ONE place the add-on's command-line flags are defined (the CLI contract).

`parse_fairness_args(command, argv)` splits our flags off an OpenRLHF command line and returns
``(config, remaining_argv)``; config is None when no fairness flag was given (then nothing is patched and the
host sees exactly the user's arguments). Every flag is accepted as ``--fairness_x`` and ``--fair_x``.
Parsers use add_help=False, allow_abbrev=False and parse_known_args, so host flags pass through untouched,
in their order. This module imports neither torch nor openrlhf.
"""

from __future__ import annotations

import argparse
from typing import Callable, Optional

from openrlhf_fair.config import COEF_FORMS, SCOPES, FairnessConfigError, RewardFairnessConfig


def _add(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Add ``--fairness_<name>`` with its short alias ``--fair_<name>`` (one dest)."""
    parser.add_argument(f"--fairness_{name}", f"--fair_{name}", dest=f"fairness_{name}", **kwargs)


# ===================================================================== reward model / DPO (train_rm, train_dpo)
def add_reward_fairness_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of the fairness-aware pairwise losses (Ouyang et al., ACL 2025). All default to off."""
    group = parser.add_argument_group(
        "reward fairness (openrlhf-fair; Ouyang et al., ACL 2025)",
        "F = f_tau(sigmoid(m / T)) / n over the reward margins m of the preference pairs (train_dpo: DPO's "
        "implicit-reward margins m = beta * [(log pi - log pi_ref)(chosen) - (log pi - log pi_ref)(rejected)]; "
        "f_tau: Lan et al.'s "
        "fairness; tau = -1 gives Jain's index). Pass one of --fairness_reg / --fairness_coef; other flags alone "
        "keep the host loss and only log fairness. Needs >= 2 pairs per micro-batch (--train.micro_batch_size).",
    )
    _add(group, "reg", type=float, default=None, metavar="ALPHA",
         help="Fairness Regularization: loss = base_loss - ALPHA * F. The paper uses 0.1.")
    _add(group, "coef", type=float, default=None, metavar="GAMMA",
         help="Fairness Coefficient as published: loss = base_loss * F**GAMMA. The paper uses 0.5.")
    _add(group, "coef_form", choices=COEF_FORMS, default=None,
         help="paper (default): F**GAMMA, whose gradient LOWERS fairness; inverse: F**(-GAMMA), which raises it.")
    _add(group, "tau", type=float, default=None, metavar="TAU",
         help="Lan et al.'s tau (default -1: Jain's index; -> 0: exp(Shannon entropy); tau = 1 is invalid).")
    _add(group, "temperature", type=float, default=None, metavar="T",
         help="Allocation x = sigmoid(margin / T) (default 1).")
    _add(group, "scope", choices=SCOPES, default=None,
         help="micro (default, as the authors did): F over the rank's micro-batch; global: over the micro-batches "
              "of all data-parallel ranks, gathered with gradients.")
    _add(group, "group_key", type=str, default=None, metavar="KEY",
         help="Dataset column (e.g. category): F over per-group mean allocations instead of per pair, and "
              "per-group accuracy / mean reward / best-minus-worst gap at evaluation. Not with --ds.packing_samples.")
    return parser


def reward_config_from_namespace(ns: argparse.Namespace) -> Optional[RewardFairnessConfig]:
    """A validated RewardFairnessConfig, or None when no reward-fairness flag was given."""
    fields = {"reg": "alpha", "coef": "gamma", "coef_form": "coef_form", "tau": "tau", "temperature": "temperature",
              "scope": "scope", "group_key": "group_key"}  # flag name -> RewardFairnessConfig field
    given = {field: getattr(ns, f"fairness_{name}") for name, field in fields.items()}
    given = {field: value for field, value in given.items() if value is not None}  # the rest keep their defaults
    return RewardFairnessConfig(**given) if given else None


# ===================================================================== PPO (train_ppo_ray)
def add_ppo_fairness_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of PPO fairness shaping (the add-on's transfer of the paper to on-policy RL). All default to off."""
    group = parser.add_argument_group(
        "PPO fairness shaping (openrlhf-fair; after Ouyang et al., ACL 2025)",
        "Rewards of a rollout batch are resources of agents: x = sigmoid(reward / T), U = mean x, F = f_tau(x) / K. "
        "Each agent's advantages are scaled by w_k = K * dPsi/dx_k of Psi = U * F**GAMMA + ALPHA * F (clipped, "
        "renormalised to mean 1), after OpenRLHF's estimator computed them; returns stay unchanged. Other flags "
        "alone (GAMMA = ALPHA = 0) only log F, Jain, Gini of the batch: a baseline.",
    )
    _add(group, "coef", type=float, default=None, metavar="GAMMA",
         help="Psi = U * F**GAMMA (the paper's fairness coefficient, as a welfare to maximise: it raises fairness). "
              "Recommended 0.5 (paper default).")
    _add(group, "reg", type=float, default=None, metavar="ALPHA",
         help="Psi = U + ALPHA * F (the paper's fairness regularisation). Paper default 0.1; 0.5-1 for a visible "
              "effect. With --fair_coef too: Psi = U * F**GAMMA + ALPHA * F.")
    _add(group, "tau", type=float, default=None, metavar="TAU",
         help="Lan et al.'s tau (default -1: Jain's index; -> 0: exp(Shannon entropy); 1 is invalid; > 1 only with "
              "--fair_reg).")
    _add(group, "temperature", type=float, default=None, metavar="T",
         help="x = sigmoid(reward / T) (default 1); use about the reward's spread for rewards far from [-5, 5].")
    _add(group, "unit", type=str, default=None, metavar="UNIT",
         help="Who the agents are: sample (default, like the paper's pairs), prompt (the n samples of one prompt, x = "
              "their mean), or label:KEY (prompts sharing the value of prompt-dataset column KEY; logs mean reward "
              "per label).")
    _add(group, "weight_clip", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
         help="Clip the weights to [LOW, HIGH] before renormalising to mean 1 (default 0 5: never flip an "
              "advantage's sign; at most 5x for one agent).")
    return parser


def ppo_config_from_namespace(ns: argparse.Namespace):
    """A validated PPOFairnessConfig, or None when no PPO fairness flag was given."""
    from openrlhf_fair.ppo_config import PPOFairnessConfig

    names = ("coef", "reg", "tau", "temperature", "unit", "weight_clip")
    given = {name: getattr(ns, f"fairness_{name}") for name in names if getattr(ns, f"fairness_{name}") is not None}
    if not given:
        return None
    return PPOFairnessConfig(**given)


# ===================================================================== end of PPO section


FlagSet = tuple[Callable[[argparse.ArgumentParser], argparse.ArgumentParser], Callable[[argparse.Namespace], object]]

FLAG_SETS: dict[str, FlagSet] = {
    "train_rm": (add_reward_fairness_arguments, reward_config_from_namespace),
    "train_dpo": (add_reward_fairness_arguments, reward_config_from_namespace),
    "train_ppo_ray": (add_ppo_fairness_arguments, ppo_config_from_namespace),
}


def _parser(command: str) -> Optional[argparse.ArgumentParser]:
    if command not in FLAG_SETS:
        return None
    parser = argparse.ArgumentParser(prog=f"openrlhf {command}", add_help=False, allow_abbrev=False)
    FLAG_SETS[command][0](parser)
    return parser


def parse_fairness_args(command: str, argv: list[str]) -> tuple[Optional[object], list[str]]:
    """Split the add-on's flags off ``argv``: (config or None, the host's arguments in their order).

    A bad value exits with status 2 and an argparse-style message, before anything is imported or patched.
    """
    parser = _parser(command)
    if parser is None:
        return None, list(argv)
    ns, rest = parser.parse_known_args(list(argv))
    try:
        config = FLAG_SETS[command][1](ns)
    except FairnessConfigError as err:
        parser.error(str(err))
    return config, rest


def fairness_help(command: str) -> str:
    """Help text of the add-on's flags for ``command`` ('' when it has none)."""
    parser = _parser(command)
    if parser is None:
        return ""
    text = parser.format_help()
    # Drop argparse's usage line: it lists only our flags and would read like the whole command's usage.
    return text.split("\n\n", 1)[1].strip() if text.startswith("usage:") and "\n\n" in text else text.strip()
