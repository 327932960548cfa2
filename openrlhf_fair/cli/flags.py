"""The add-on's command-line flags, generated from the settings' dataclass fields (the CLI contract).

Each setting is defined once, as a field of `RewardFairnessConfig` (train_rm, train_dpo) or `PPOFairnessConfig`
(train_ppo_ray) whose metadata holds its help text (`openrlhf_fair.settings.setting`); this module turns every field
into one flag, ``--<FLAG_PREFIX><field>`` (``--fairness_reg``, ``--fair_coef``), with type, choices and default
taken from the field. A flag of another subcommand (``--fair_reg`` on train_rm, ``--fairness_coef`` on
train_ppo_ray) is refused, naming the spelling to use.

`parse_fairness_args(command, argv)` splits our flags off an OpenRLHF command line and returns
``(config, remaining_argv)``; config is None when no add-on flag was given (then nothing is patched and the
host sees exactly the user's arguments). Parsers use add_help=False, allow_abbrev=False and parse_known_args, so
host flags pass through untouched, in their order. This module imports neither torch nor openrlhf.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import typing
from typing import Optional

from openrlhf_fair.errors import FairnessConfigError
from openrlhf_fair.settings import RewardFairnessConfig, PPOFairnessConfig

# The config class whose fields are each subcommand's add-on flags, and the flag group's title and description.
FLAG_SETS: dict[str, tuple[type, str, str]] = {
    "train_rm": (
        RewardFairnessConfig,
        "reward fairness (openrlhf-fair; Ouyang et al., ACL 2025)",
        "F = f_tau(sigmoid(m / T)) / n over the reward margins m of the preference pairs (f_tau: Lan et al.'s "
        "fairness; tau = -1 gives Jain's index). Pass one of --fairness_reg / --fairness_coef; other flags alone "
        "keep the host loss and only log fairness. Needs >= 2 pairs per micro-batch (--train.micro_batch_size).",
    ),
    "train_dpo": (
        RewardFairnessConfig,
        "reward fairness (openrlhf-fair; Ouyang et al., ACL 2025)",
        "F = f_tau(sigmoid(m / T)) / n over DPO's implicit-reward margins m = beta * [(log pi - log pi_ref)(chosen) "
        "- (log pi - log pi_ref)(rejected)] (f_tau: Lan et al.'s fairness; tau = -1 gives Jain's index). Pass one "
        "of --fairness_reg / --fairness_coef; other flags alone keep the host loss and only log fairness. Needs "
        ">= 2 pairs per micro-batch (--train.micro_batch_size).",
    ),
    "train_ppo_ray": (
        PPOFairnessConfig,
        "PPO fairness shaping (openrlhf-fair; after Ouyang et al., ACL 2025)",
        "Rewards of a rollout batch are resources of agents: x = sigmoid(reward / T), U = mean x, F = f_tau(x) / K. "
        "Each agent's advantages are scaled by w_k = K * dPsi/dx_k of Psi = U * F**GAMMA + ALPHA * F (clipped, "
        "renormalised to mean 1), after OpenRLHF's estimator computed them; returns stay unchanged. Other flags "
        "alone (GAMMA = ALPHA = 0) only log F, Jain, Gini of the batch: a baseline. Derivation: docs/ppo.md.",
    ),
}

def _flag_type(hint) -> tuple[type, Optional[int]]:
    """(argparse type, nargs) of a field's type hint: Optional[X] -> X; tuple[X, X] -> X with nargs 2."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return args[0], len(args)
    return (args[0] if args else hint), None


def fields_of(command: str) -> list[dataclasses.Field]:
    """The settings of the command's config class that the command has as flags."""
    return [f for f in dataclasses.fields(FLAG_SETS[command][0]) if command in (f.metadata["commands"] or (command,))]


def flag_name(config_class: type, field: dataclasses.Field) -> str:
    """The flag of a setting: its own ``flag`` or ``--<FLAG_PREFIX><field name>``."""
    return field.metadata["flag"] or f"--{config_class.FLAG_PREFIX}{field.name}"


def add_arguments(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """One flag per field of the command's config class; every default is None (a given flag is then known)."""
    config_class, title, description = FLAG_SETS[command]
    group = parser.add_argument_group(title, description)
    hints = typing.get_type_hints(config_class)
    for field in fields_of(command):
        meta, name = field.metadata, flag_name(config_class, field)
        flag_type, nargs = _flag_type(hints[field.name])
        default = " ".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
        help_text = meta["help"] + ("" if field.default is None else f" Default: {default}.")
        group.add_argument(name, dest=field.name, type=flag_type, nargs=nargs, choices=meta["choices"],
                           default=None, metavar=meta["metavar"], help=help_text)
    return parser


class _Parser(argparse.ArgumentParser):
    """Errors are one line (``openrlhf <command>: error: ...``, exit 2), without a usage of only our flags."""

    def error(self, message: str):
        from openrlhf_fair.host.compat import in_host_spelling

        self.exit(2, f"{self.prog}: error: {in_host_spelling(message)}\n")


def _parser(command: str) -> Optional[_Parser]:
    if command not in FLAG_SETS:
        return None
    parser = _Parser(prog=f"openrlhf {command}", add_help=False, allow_abbrev=False)
    return add_arguments(parser, command)


def config_from_namespace(command: str, ns: argparse.Namespace):
    """The command's validated config, or None when none of its flags was given (the rest keep their defaults)."""
    given = {f.name: getattr(ns, f.name) for f in fields_of(command) if getattr(ns, f.name) is not None}
    return FLAG_SETS[command][0](**given) if given else None


def spellings(command: str) -> dict[str, dataclasses.Field]:
    """The command's add-on flags -> their settings."""
    config_class = FLAG_SETS[command][0]
    return {flag_name(config_class, field): field for field in fields_of(command)}


def unknown_addon_flag(command: str, host_argv: list[str]) -> Optional[str]:
    """An error for the first host argument that is a near miss of the add-on's flags, else None.

    Near miss: a flag of another subcommand (with its counterpart here, if any), any unknown ``--fair*`` (the
    add-on's prefix, which OpenRLHF does not use), or an undotted flag within a typo of one of ours. The installed
    OpenRLHF's own flags are never near misses: dotted on 0.10.2+ (``--train.micro_batch_size``), and on the flat
    releases 0.9.3 - 0.10.1 read from its CLI file (``--temperature`` is train_ppo_ray's, not ``--fair_temperature``).
    """
    from openrlhf_fair.host.compat import is_host_flag

    ours, config_class = spellings(command), FLAG_SETS[command][0]
    current = list(dict.fromkeys(flag_name(config_class, field) for field in ours.values()))
    for token in host_argv:
        name = token.split("=", 1)[0]
        if not name.startswith("--") or "." in name or is_host_flag(command, name):
            continue
        elsewhere = {other: spellings(other)[name] for other in FLAG_SETS if name in spellings(other)}
        if elsewhere:
            field = next(iter(elsewhere.values()))
            same = next((f for f in ours.values() if f.name == field.name), None)  # the same setting, other prefix
            counterpart = field.metadata["counterpart"] or (flag_name(config_class, same) if same else "")
            instead = f"; on {command} use {counterpart}" if counterpart else ""
            return f"{name} is a flag of {'/'.join(elsewhere)}, not of {command}{instead}"
        close = difflib.get_close_matches(name, list(ours), n=1, cutoff=0.8)
        if close:
            return f"unrecognized argument {name}; did you mean {flag_name(config_class, ours[close[0]])}?"
        if name.startswith("--fair"):
            return f"unrecognized argument {name}; the add-on's flags of {command}: {', '.join(current)}"
    return None


def parse_fairness_args(command: str, argv: list[str]) -> tuple[Optional[object], list[str]]:
    """Split the add-on's flags off ``argv``: (config or None, the host's arguments in their order).

    A bad value exits with status 2 and an argparse-style message, before anything is imported or patched.
    """
    parser = _parser(command)
    if parser is None:
        return None, list(argv)
    ns, rest = parser.parse_known_args(list(argv))
    mistake = unknown_addon_flag(command, rest)
    if mistake:
        parser.error(mistake)
    try:
        config = config_from_namespace(command, ns)
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


def markdown_table(command: str) -> str:
    """The command's add-on flags as a markdown table (flag, default, help), as README.md and docs/ show them.

    Generated from the settings, so the tables in the docs cannot drift from ``--help``
    (tests/test_fair_readme.py compares them).
    """
    config_class = FLAG_SETS[command][0]
    rows = ["| flag | default | what it does |", "|---|---|---|"]
    for field in fields_of(command):
        meta = field.metadata
        metavar = meta["metavar"]
        if meta["choices"]:
            metavar = "{" + ",".join(meta["choices"]) + "}"
        metavar = " ".join(metavar) if isinstance(metavar, tuple) else metavar
        default = field.default
        default = "off" if default is None else " ".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = meta["help"].replace("|", "\\|")
        rows.append(f"| `{flag_name(config_class, field)} {metavar}` | {default} | {help_text} |")
    return "\n".join(rows)
