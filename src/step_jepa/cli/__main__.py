"""`python -m step_jepa.cli`: the `step-jepa` command."""

import sys

from step_jepa.cli.main import main

sys.exit(main())
