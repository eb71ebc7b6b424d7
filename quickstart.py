"""Deprecated path of `python -m sweeps.quickstart` (console command comet-quickstart); kept so old commands
still work."""
import sys

import tools
from sweeps import quickstart

if __name__ == "__main__":
    tools.deprecated("python quickstart.py", "python -m sweeps.quickstart (or comet-quickstart)")
    sys.exit(quickstart.main())
