"""`python -m artefacts evaluate | quantize | export ARGS` (artefacts/cli.py)."""
import sys

from artefacts.cli import main

sys.exit(main())
