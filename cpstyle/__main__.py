"""`python -m cpstyle ...`: the same as the `cpstyle` command (cpstyle/cli.py)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
