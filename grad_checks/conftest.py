# The device parameter and the tolerance table live in tests/conftest.py: one table for both suites.
from tests.conftest import device, numpy_path_threads, pytest_collection_modifyitems  # noqa: F401
