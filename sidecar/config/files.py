"""Reading a routes file from disk: its text to ``load_config``, or a problem saying why not.

The one place the config package touches the file system (and, by default, the
process environment).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .model import Config, Problem
from .schema import load_config

# The routes.yaml installed with the package (sidecar/routes.yaml links to the repository's).
SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "routes.yaml"


def read_config(
    path: str, *, strict: bool, env: Mapping[str, str] | None = None
) -> tuple[Config | None, list[Problem]]:
    """Read and validate the file at ``path`` (with ``env``, default the process's)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        return None, [Problem(path, 0, f"cannot read the file: {exc.strerror}")]
    except UnicodeDecodeError as exc:  # an editor saved it as Latin-1, say
        with open(path, "rb") as f:
            line = f.read()[: exc.start].count(b"\n") + 1
        return None, [Problem(path, line, "not UTF-8: save the file as UTF-8")]
    return load_config(text, file=path, env=os.environ if env is None else env, strict=strict)
