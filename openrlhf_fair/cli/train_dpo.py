"""Launcher entry: `torchrun -m openrlhf_fair.cli.train_dpo ...` / `deepspeed --module openrlhf_fair.cli.train_dpo ...`.

Same as `openrlhf train_dpo ...`: OpenRLHF's `openrlhf.cli.train_dpo` with the add-on's flags, run in each rank.
"""

import sys

from openrlhf_fair.cli.runner import run_host_cli

if __name__ == "__main__":
    sys.exit(run_host_cli("train_dpo", sys.argv[1:]))
