"""`python -m storymaker VERB ...`: the `storymaker` command (storymaker/cli.py)."""

import sys

from .cli import main

sys.exit(main(prog="python -m storymaker"))
