import sys
from pathlib import Path

# Tests import the package from the checkout, whichever directory pytest is started from.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pytest_configure(config):
    # Registered here rather than in a pytest.ini so that `pytest -m gpu` works from any directory.
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one (tools/gpu_check.sh runs "
                                       "them on a GPU machine: python -m pytest -m gpu tests)")
