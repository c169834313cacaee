"""Train and evaluate RecBole and recbole_ext models; see ``python run_recbole_ext.py --help``."""

import sys

from recbole_ext.cli import main

if __name__ == "__main__":
    sys.exit(main())
