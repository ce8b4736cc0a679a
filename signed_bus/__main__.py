"""``python -m signed_bus ...``: the ``signed-bus`` console script."""

import sys

from signed_bus._cli import main

if __name__ == "__main__":
    sys.exit(main())
