"""`python -m openrlhf_fair.report ...` = `openrlhf-fair report ...`."""

import sys

from openrlhf_fair.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
