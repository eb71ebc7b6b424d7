"""Deprecated path of `python -m artefacts evaluate` (console command comet-evaluate); kept so old commands still work."""
import sys

import tools
from artefacts import cli

if __name__ == "__main__":
    tools.deprecated("python evaluate.py", "python -m artefacts evaluate (or comet-evaluate)")
    sys.exit(cli.main(["evaluate", *sys.argv[1:]]))
