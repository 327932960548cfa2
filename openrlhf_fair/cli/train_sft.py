"""Launcher entry: `torchrun -m openrlhf_fair.cli.train_sft ...` / `deepspeed --module openrlhf_fair.cli.train_sft ...`.

Same as `openrlhf train_sft ...`: OpenRLHF's `openrlhf.cli.train_sft` with the add-on's flags, run in each rank.
"""

import sys

from openrlhf_fair.cli.runner import run_host_cli

if __name__ == "__main__":
    sys.exit(run_host_cli("train_sft", sys.argv[1:]))
