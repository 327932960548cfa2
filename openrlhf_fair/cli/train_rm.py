"""Launcher entry: `torchrun -m openrlhf_fair.cli.train_rm ...` / `deepspeed --module openrlhf_fair.cli.train_rm ...`.

Same as `openrlhf train_rm ...`: OpenRLHF's `openrlhf.cli.train_rm` with the add-on's flags, run in each rank.
"""

import sys

from openrlhf_fair.cli.runner import run_host_cli

if __name__ == "__main__":
    sys.exit(run_host_cli("train_rm", sys.argv[1:]))
