"""The config a server starts with, shared by ``sidecar serve`` and ``sidecar demo``.

Every problem is printed (each with its ``file:line``); with errors the server does not
start, and says so; otherwise logging is configured as the config says. No aiohttp here:
``cli`` imports this without paying for the server.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from .config import Config, Problem
from .logs import configure


def report(problems: list[Problem]) -> None:
    """Every problem on stderr, one a line."""
    for problem in problems:
        print(problem, file=sys.stderr)


def config_to_serve(path: str, load: Callable[[], tuple[Config | None, list[Problem]]]) -> Config | None:
    """The config a server starts with: every problem printed; ``None`` (and a line
    saying so) if there are errors; otherwise logging set up as it says."""
    config, problems = load()
    report(problems)
    if config is None:
        print(f"{path}: not starting: the config has errors (see above)", file=sys.stderr)
        return None
    configure(config.log_level, config.log_format)
    return config
