"""tests/servers.py: a missing system program skips a test outside CI, naming the Debian
package to install, and fails it in CI."""

from __future__ import annotations

import pytest

from . import servers

MISSING = "sidecar-no-such-program"


def test_a_program_on_path_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert servers.binary("sh").endswith("/sh")


def test_a_missing_program_skips_outside_ci_naming_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setitem(servers.PACKAGES, MISSING, "sidecar-test-package")
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install sidecar-test-package"):
        servers.binary(MISSING)


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes"])
def test_a_missing_program_fails_in_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    monkeypatch.setitem(servers.PACKAGES, MISSING, "sidecar-test-package")
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install sidecar-test-package.*CI must have it"):
        servers.binary(MISSING)


def test_a_program_not_in_the_table_is_its_own_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=rf"apt-get install {MISSING}\b"):
        servers.binary(MISSING)


@pytest.mark.parametrize("value", ["", "false", "0"])
def test_ci_means_true(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert not servers.in_ci()
