"""Launcher entry: `torchrun -m openrlhf_fair.cli.train_ppo_ray ...` / `deepspeed --module openrlhf_fair.cli.train_ppo_ray ...`.

Same as `openrlhf train_ppo_ray ...`: OpenRLHF's `openrlhf.cli.train_ppo_ray` with the add-on's flags, run in each rank.
"""

import sys

from openrlhf_fair.cli.runner import run_host_cli

if __name__ == "__main__":
    sys.exit(run_host_cli("train_ppo_ray", sys.argv[1:]))
