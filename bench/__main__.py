"""python -m bench: the harness in bench/run.py."""
import sys

from bench.run import main

sys.exit(main())
