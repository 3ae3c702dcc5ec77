"""One local Ray instance for the whole test run (2 CPUs, as the CI machine has), started
only when a test asks for it; its address lets driver subprocesses join it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from tests.conftest import REPO_ROOT

CHECKOUT_PATH = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "clients" / "python")])


def checkout_env() -> dict[str, str]:
    """This environment with this checkout first on the path: Ray's workers start from
    the environment of the process that started Ray, and must import this code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = CHECKOUT_PATH + os.pathsep + env.get("PYTHONPATH", "")
    env["RAY_USAGE_STATS_ENABLED"] = "0"  # nothing may leave the machine
    return env


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    import ray

    env = checkout_env()
    names = ("PYTHONPATH", "RAY_USAGE_STATS_ENABLED")
    before = {name: os.environ.get(name) for name in names}
    os.environ.update({name: env[name] for name in names})
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    finally:
        for name, value in before.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
