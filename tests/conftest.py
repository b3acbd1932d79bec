import os

# Numba and torch both run on OpenMP, whose threads spin while they wait for work. With pytest-xdist
# (`make test` runs two workers on two cores) the spinning threads of one process take the cores
# the other needs: a training test ran 4x slower beside a second copy of itself than with
# passive waiting. Read once, when the OpenMP runtime loads, so set before numba or torch is
# imported; a value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
from hypothesis import HealthCheck, settings

# CI runs few examples per property (Numba kernels compile once, then each example is cheap);
# `HYPOTHESIS_PROFILE=thorough pytest` explores much more.
settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def _gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


GPU = _gpu_available()


def pytest_collection_modifyitems(config, items):
    if GPU:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with cupy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def standin():
    """cupy replaced by tests/cupy_standin.py for the test (the GPU paths' Python, with the
    kernels under the CUDA emulation); yields its ledger of copies and launches."""
    from tests import cupy_standin, emulation

    if emulation.compiler() is None:
        pytest.skip("the cupy stand-in runs the kernels under the CUDA emulation, which needs g++")
    with cupy_standin.installed() as ledger:
        yield ledger
