"""`python -m openrlhf_fair.debias ...` = `openrlhf-fair debias ...` (through the CLI front, which serves the
host's CUDA-only imports where they are missing)."""

import sys

from openrlhf_fair.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["debias", *sys.argv[1:]]))
