""".ci/install-servers, run for real with fake ``apt-get`` (and ``sudo``) on a PATH of its own
(so prometheus and redis-server look missing): the policy-rc.d it adds so that the packages'
services do not start is there during the install and gone afterwards, whether the install
succeeded or failed; one that was there before is left alone."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT

SCRIPT = ROOT / ".ci" / "install-servers"


def fake_path(tmp: Path, apt_status: int) -> Path:
    """A bin directory with only what the script needs: apt-get records the policy file it
    saw and exits ``apt_status``; sudo runs its arguments."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for tool in ("id", "tee", "chmod", "rm", "cat"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "apt-get").write_text(
        f'#!/bin/bash\necho "$*" >> "{tmp}/apt.log"\n'
        f'cat "$SIDECAR_POLICY_RC_D" >> "{tmp}/apt.log" 2>/dev/null || echo "no policy" >> "{tmp}/apt.log"\n'
        f"exit {apt_status}\n"
    )
    (bin_dir / "sudo").write_text('#!/bin/bash\nexec "$@"\n')
    for name in ("apt-get", "sudo"):
        (bin_dir / name).chmod(0o755)
    return bin_dir


def install(tmp: Path, apt_status: int) -> tuple[subprocess.CompletedProcess[str], Path]:
    policy = tmp / "policy-rc.d"
    env = {"PATH": str(fake_path(tmp, apt_status)), "SIDECAR_POLICY_RC_D": str(policy), "HOME": str(tmp)}
    bash = shutil.which("bash")
    assert bash is not None
    result = subprocess.run(
        [bash, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60, check=False, cwd=tmp
    )
    return result, policy


@pytest.mark.parametrize("apt_status", [100, 0], ids=["install-fails", "install-succeeds"])
def test_the_policy_file_is_in_place_during_the_install_and_removed_after(tmp_path: Path, apt_status: int) -> None:
    result, policy = install(tmp_path, apt_status)
    assert result.returncode == apt_status, result.stderr
    assert "installing prometheus redis-server" in result.stdout
    log = (tmp_path / "apt.log").read_text()
    assert log.startswith("update -qq\n#!/bin/sh\nexit 101\n"), log  # in place while apt-get ran
    assert not policy.exists()


def test_a_policy_file_that_was_there_is_left_alone(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 0\n")
    result, _ = install(tmp_path, 100)
    assert result.returncode == 100
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"


def test_ci_runs_it_before_the_tests() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "\n.ci/install-servers\n" in script
    assert "apt-get" not in script and "policy-rc.d" not in script
    assert os.access(SCRIPT, os.X_OK)
