"""Deprecated path of `python -m artefacts quantize` (console command comet-quantize); kept so old commands still work."""
import sys

import tools
from artefacts import cli

if __name__ == "__main__":
    tools.deprecated("python quantize.py", "python -m artefacts quantize (or comet-quantize)")
    sys.exit(cli.main(["quantize", *sys.argv[1:]]))
