import sys
from pathlib import Path

# Tests import the package from the checkout, whichever directory pytest is started from.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
