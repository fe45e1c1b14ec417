"""Reproducible builds: requirements.lock pins every package pyproject.toml's ranges bring
in, and the Dockerfile and .ci/run install from it (the Dockerfile from files that exist
and that .dockerignore lets through)."""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import ROOT
from .servers import in_ci

LOCK = ROOT / "requirements.lock"


def pins() -> dict[str, str]:
    """Package (canonical name) -> the version the lock pins."""
    out: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"requirements.lock: not 'name==version': {line!r}"
            out[canonicalize_name(name)] = version.strip()
    return out


def declared(build: bool = True) -> list[Requirement]:
    """Every requirement pyproject.toml states: runtime, each extra, and the build backend."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    texts = [*(pyproject["build-system"]["requires"] if build else ()), *project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        texts += extra
    return [Requirement(text) for text in texts]


def test_the_lock_pins_every_declared_requirement_within_its_range() -> None:
    pinned = pins()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} is not in requirements.lock: run scripts/lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"requirements.lock pins {name}=={pinned[name]}, outside {requirement}: run scripts/lock"
        )


def test_the_lock_pins_the_linters_ci_runs() -> None:
    assert {"ruff", "mypy", "pip", "setuptools"} <= set(pins())


def test_the_lock_pins_every_package_the_install_brings_in() -> None:
    # Walks the installed packages from the declared requirements down: a dependency's new
    # dependency must be in the lock too. In CI, installed from the lock, the versions agree.
    pinned = pins()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(r, "") for r in declared(build=False)]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} (needed by the install) is not in requirements.lock: run scripts/lock"
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        dist = metadata.distribution(name)
        if in_ci():
            assert dist.version == pinned[name], f"{name} {dist.version} installed, {pinned[name]} locked"
        todo += [(Requirement(sub), wanted) for sub in dist.requires or () for wanted in requirement.extras or {""}]
    assert len({name for name, _ in seen}) > len(declared(build=False))  # the walk went past the top


# --- the Dockerfile ---------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined), comments left out."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def ignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    return any(fnmatch.fnmatch(path.rstrip("/"), p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


def test_every_file_the_dockerfile_copies_exists_and_is_sent_to_the_builder() -> None:
    copies = [shlex.split(rest) for keyword, rest in instructions() if keyword == "COPY"]
    assert copies
    for args in copies:
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not ignored(source), f"COPY {source}: excluded by .dockerignore"


def test_the_dockerfile_installs_from_the_lock() -> None:
    steps = instructions()
    copied = " ".join(rest for keyword, rest in steps if keyword == "COPY")
    assert "requirements.lock" in shlex.split(copied)
    runs = [rest for keyword, rest in steps if keyword == "RUN" and "pip install" in rest]
    assert runs
    for run in runs:
        for command in run.split("&&"):
            if "pip install" in command:
                assert "-c requirements.lock" in command, command
    assert not any("[test]" in run for run in runs)  # the image gets no test or lint packages


# --- CI -----------------------------------------------------------------------------


def test_ci_installs_from_the_lock_and_runs_the_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    installs = [line for line in script.splitlines() if "pip" in line and " install " in line]
    assert installs and all("-c requirements.lock" in line for line in installs), installs
    assert "export CI=true" in script  # server-needing tests fail rather than skip
    servers = (ROOT / ".ci" / "install-servers").read_text()
    for package in ("prometheus", "redis-server"):
        assert re.search(rf"missing\+=\({package}\)", servers), package
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"Run the tests.*?```sh\n(.*?)\n```", readme, re.DOTALL)
    assert command is not None
    assert script.rstrip().endswith(command.group(1).strip())


def test_the_readme_says_how_to_refresh_the_lock() -> None:
    assert "scripts/lock" in (ROOT / "README.md").read_text()
    assert (ROOT / "scripts" / "lock").stat().st_mode & 0o111, "scripts/lock must be executable"
