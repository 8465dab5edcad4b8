"""`python -m tools.bench`: the speed benchmark (tools/bench/speed.py), arms side by side."""
import sys

from tools.bench.speed import main

sys.exit(main())
