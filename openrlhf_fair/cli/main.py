"""`openrlhf` / `openrlhf-fair`: one program whose subcommands are OpenRLHF's CLI modules plus the add-on's own.

    openrlhf train_rm <OpenRLHF's train_rm flags> [--fairness_reg 0.1 ...]
    openrlhf train_ppo_ray <OpenRLHF's flags> [--fair_coef 0.5 ...]
    openrlhf-fair report --model PATH --data FILE --out DIR
    openrlhf-fair debias --model PATH --data FILE --remove length --out DIR
    openrlhf-fair demo
    openrlhf-fair ppo-report --logdir TENSORBOARD_DIR --out DIR

With no add-on flag a host subcommand behaves exactly like ``python -m openrlhf.cli.<name>``.
"""

from __future__ import annotations

import argparse
import os
import sys

# The add-on's own subcommands and one line of help each (`run_addon_command` runs them).
ADDON_COMMANDS = {
    "report": "evaluate saved reward models on labelled pairs: accuracy and fairness per group",
    "debias": "remove a bias direction (length, a group) from a saved reward model's value head, without retraining",
    "demo": "train BT / fairness-regularised / fairness-coefficient reward models on real data and compare",
    "ppo-report": "plot per-group reward, fairness weights and F over the steps of train_ppo_ray runs (TensorBoard logs)",
}


def run_addon_command(command: str, argv: list[str]) -> int:
    """Run one of the add-on's own subcommands (imported here: each pulls in torch and, for some, OpenRLHF)."""
    if command in ("report", "debias", "demo"):  # they load OpenRLHF's models: serve its CUDA-only imports if missing
        from openrlhf_fair import cpu_backend

        cpu_backend.serve_missing_host_imports()
    if command == "report":
        from openrlhf_fair.report.cli import main as command_main
    elif command == "debias":
        from openrlhf_fair.debias import main as command_main
    elif command == "demo":
        from openrlhf_fair.demo.cli import main as command_main
    elif command == "ppo-report":
        from openrlhf_fair.report.ppo import main as command_main
    else:
        raise AssertionError(f"no add-on command {command!r}")
    return command_main(argv)


def program_name() -> str:
    """The name the user typed: ``openrlhf-fair`` or ``openrlhf`` (both run this; ``python -m``: openrlhf)."""
    name = os.path.basename(sys.argv[0])
    return name if name in ("openrlhf", "openrlhf-fair") else "openrlhf"


def build_parser(host_commands: list[str]) -> argparse.ArgumentParser:
    lines = [f"  {name:<16} OpenRLHF's openrlhf.cli.{name}" for name in host_commands]
    lines += [f"  {name:<16} {text}" for name, text in ADDON_COMMANDS.items()]
    parser = argparse.ArgumentParser(
        prog=program_name(),
        description="OpenRLHF with reward fairness (openrlhf-fair). Subcommands:\n" + "\n".join(lines),
        epilog="`openrlhf <subcommand> --help` shows the subcommand's flags, OpenRLHF's and the add-on's.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    backend = parser.add_mutually_exclusive_group()
    backend.add_argument("--cpu", dest="cpu", action="store_true", default=None,
                         help="run OpenRLHF on the CPU backend (default: only when CUDA is unavailable; "
                              "env OPENRLHF_FAIR_CPU=1/0 does the same)")
    backend.add_argument("--no-cpu", dest="cpu", action="store_false", help="never use the CPU backend")
    parser.add_argument("--version", action="store_true", help="print the add-on's and OpenRLHF's versions")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of the add-on's errors (bad settings, data, host), which are otherwise "
                             "printed as one message with exit status 2; env OPENRLHF_FAIR_DEBUG=1 does the same, "
                             "e.g. in torchrun/deepspeed ranks")
    parser.add_argument("command", nargs="?", metavar="subcommand")
    return parser


def main(argv: list[str] | None = None) -> int:
    from openrlhf_fair import __version__
    from openrlhf_fair.cli.runner import DEBUG_ENV, host_commands, run_host_cli
    from openrlhf_fair.host.compat import describe_host

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = host_commands()
    parser = build_parser(commands)
    # Everything after the subcommand belongs to it: parse only the options before it.
    split = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), len(argv))
    args = parser.parse_args(argv[: split + 1])
    rest = argv[split + 1 :]
    if args.debug:
        os.environ[DEBUG_ENV] = "1"  # read by cli.runner here and inherited by the ranks and Ray workers
    if args.version:
        print(f"openrlhf-fair {__version__}; {describe_host()}")
        return 0
    if args.command is None:
        parser.print_help()
        return 0 if argv else 2
    if args.command in ADDON_COMMANDS:
        return run_addon_command(args.command, rest)
    if args.command in commands:
        return run_host_cli(args.command, rest, cpu=args.cpu)
    known = ", ".join(commands + list(ADDON_COMMANDS)) or f"none ({describe_host()})"
    parser.error(f"unknown subcommand {args.command!r}; choose from: {known}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
