import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# Ray workers inherit the environment of the process that starts Ray: let them import tests/toys.py, and the test
# modules of every wing's folder (a class defined in a test and made an actor is imported by its module's name).
WINGS = [str(d) for d in sorted(TESTS.iterdir()) if d.is_dir() and d.name not in ("fixtures", "__pycache__")]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), *WINGS, os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(TESTS))

from helpers_targets import local_ray  # noqa: E402


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray with fake GPUs: 8 CPUs, 4 GPUs, whatever this machine really has."""
    yield from local_ray(num_cpus=8, num_gpus=4)
