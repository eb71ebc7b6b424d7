"""Deprecated path of `python -m artefacts export` (console command comet-export); kept so old commands still work."""
import sys

import tools
from artefacts import cli

if __name__ == "__main__":
    tools.deprecated("python export_policy.py", "python -m artefacts export (or comet-export)")
    sys.exit(cli.main(["export", *sys.argv[1:]]))
