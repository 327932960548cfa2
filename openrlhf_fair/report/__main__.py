import sys

from openrlhf_fair.report.cli import main

sys.exit(main())
