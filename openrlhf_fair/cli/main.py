"""`openrlhf` / `openrlhf-fair`: OpenRLHF's CLI modules as subcommands, plus the add-on's flags.

Placeholder while the CLI is written; see README.
"""
import sys


def main(argv=None):
    print("openrlhf-fair CLI under construction", file=sys.stderr)
    return 2
