"""System programs the tests run for real (promtool, prometheus, redis-server ...).

``binary("promtool")`` is the program's path, or, when it is not on PATH: a skip
outside CI that names the Debian package to install, and a failure in CI (``CI``
set to ``true``, as ``.ci/run`` does), where a missing server is a broken setup,
never a reason to pass. Add a program to :data:`PACKAGES` once, then call
``binary(name)`` from any test or fixture.
"""

from __future__ import annotations

import os
import shutil

import pytest

# The Debian package that brings each program (``.ci/run`` installs them).
PACKAGES: dict[str, str] = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
}


def in_ci() -> bool:
    """``CI=true`` (or 1/yes), as CI systems and ``.ci/run`` set it."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def binary(name: str) -> str:
    """The path of system program ``name``; skips (fails in CI) when it is missing."""
    path = shutil.which(name)
    if path is not None:
        return path
    package = PACKAGES.get(name, name)
    message = f"{name} is not installed: apt-get install {package} (Debian package {package!r})"
    if in_ci():
        pytest.fail(f"{message}; CI must have it (.ci/run installs it)", pytrace=False)
    pytest.skip(message)
