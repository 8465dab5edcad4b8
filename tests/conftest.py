
def pytest_configure(config):
    # Registered here rather than in a pytest.ini so that `pytest -m gpu` works from any directory.
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one (tools/gpu_check.sh runs "
                                       "them on a GPU machine: python -m pytest -m gpu tests)")
