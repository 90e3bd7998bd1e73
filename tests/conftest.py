import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from postgres import postgres_server, postgres_url  # noqa: E402,F401  fixtures for the tests on PostgreSQL


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def study_url(request, tmp_path):
    """A storage URL for a fresh study: a SQLite file, and a database on the throwaway PostgreSQL server (a server
    start: the slow tier)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (about 3 s to start)."""
    import logging

    import ray

    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
