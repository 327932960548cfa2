"""Run one of OpenRLHF's CLI modules exactly as `python -m openrlhf.cli.<command>` would, plus the add-on.

Order (the CLI contract): split the add-on's flags off, activate the CPU backend when asked or when CUDA is
missing, apply the fairness patches only when a fairness flag is on, then run the host module as ``__main__``
with the remaining arguments. With no add-on flag nothing is patched (except the CPU backend on a machine
without CUDA, which OpenRLHF cannot run without) and the host sees exactly the arguments the user gave.

Errors the user can act on (`openrlhf_fair.settings.AddonError`: a setting that cannot work, bad data, a host that
does not match) are printed as one message, exit status 2, in the driver and in every torchrun/deepspeed rank;
also when they come back from a Ray actor. ``OPENRLHF_FAIR_DEBUG=1`` (or ``openrlhf --debug``) re-raises them
with their traceback.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
from pathlib import Path

HOST_CLI_PACKAGE = "openrlhf.cli"
DEBUG_ENV = "OPENRLHF_FAIR_DEBUG"


def host_commands() -> list[str]:
    """OpenRLHF's CLI modules that can run as ``__main__`` (found on disk, none of them imported)."""
    spec = importlib.util.find_spec(HOST_CLI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return []
    commands = []
    for location in spec.submodule_search_locations:
        for path in sorted(Path(location).glob("*.py")):
            if path.stem != "__init__" and 'if __name__ == "__main__"' in path.read_text(encoding="utf-8"):
                commands.append(path.stem)
    return commands


def wants_help(argv: list[str]) -> bool:
    return any(arg in ("-h", "--help") for arg in argv)


def run_host_cli(command: str, argv: list[str], cpu: bool | None = None) -> int:
    """Run ``openrlhf.cli.<command>`` with ``argv`` and the add-on's flags applied; return its exit code."""
    from openrlhf_fair.errors import AddonError
    from openrlhf_fair.host.compat import in_host_spelling

    try:
        return _run_host_cli(command, argv, cpu)
    except AddonError as err:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        cause = getattr(err, "cause", None)  # a Ray actor's error arrives as a RayTaskError that is also its class
        message = in_host_spelling(str(cause if isinstance(cause, AddonError) else err).removeprefix("openrlhf-fair: "))
        print(f"openrlhf {command}: error: {message}\n(traceback: {DEBUG_ENV}=1)", file=sys.stderr, flush=True)
        return 2


def apply_fairness(command: str, config) -> None:
    """Apply the fairness feature of a trainer command (its settings come from `cli.flags`)."""
    if command == "train_rm":
        from openrlhf_fair.features.pairwise_trainer import apply_rm_fairness

        apply_rm_fairness(config)
    elif command == "train_dpo":
        from openrlhf_fair.features.pairwise_trainer import apply_dpo_fairness

        apply_dpo_fairness(config)
    elif command == "train_ppo_ray":
        from openrlhf_fair.features.experience_maker import apply_fairness as apply_ppo_fairness

        apply_ppo_fairness(config)
    else:
        raise AssertionError(f"no fairness feature for {command!r}")  # cli.flags gives configs only to these


def _run_host_cli(command: str, argv: list[str], cpu: bool | None) -> int:
    from openrlhf_fair.cli import flags
    from openrlhf_fair.host import compat

    config, rest = flags.parse_fairness_args(command, argv)
    if wants_help(argv):
        text = flags.fairness_help(command)
        if text:
            print(compat.in_host_spelling(text) + "\n\nOpenRLHF's own flags follow.\n", flush=True)

    if config is not None and not wants_help(argv):  # pre-run data checks only with a fairness flag
        from openrlhf_fair.checks import preflight

        compat.require_family()  # an OpenRLHF outside the supported range: refused, naming version and range
        preflight.check(command, rest, config)  # raises PreflightError (an AddonError): one message, exit 2

    from openrlhf_fair import cpu_backend

    cpu_backend.maybe_activate(command, cpu)
    if config is not None:
        apply_fairness(command, config)

    module = f"{HOST_CLI_PACKAGE}.{command}"
    saved_argv = sys.argv
    sys.argv = [module.replace(".", os.sep) + ".py", *rest]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:  # argparse --help / errors, and host code calling sys.exit
        if stop.code is not None and not isinstance(stop.code, int):
            print(stop.code, file=sys.stderr, flush=True)  # as Python does for an uncaught SystemExit("message")
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved_argv
    return 0
