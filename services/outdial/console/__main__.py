"""``python -m outdial.console``: the same as ``outdial console``."""

import sys

from outdial.cli.main import main

sys.exit(main(["console", *sys.argv[1:]]))
