"""The config a server starts with, shared by ``sidecar serve`` and ``sidecar demo``.

Every problem is printed (each with its ``file:line``); with errors the server does not
start, and says so; otherwise logging is configured as the config says. No aiohttp here:
``cli`` imports this without paying for the server.

Also what ``sidecar check`` and the start-up log say of each auth policy's secrets: each
variable its bearer or jwt.secrets list names, unset, empty or set with its fingerprint
(``sidecar.fingerprint``), the same string ``sidecar probe`` and ``sidecar fingerprint``
print for the same secret. Never in a response to a client: a slow KDF per request
would be a lever for anyone sending requests.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

from .config import Config, Problem
from .fingerprint import describe
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


def secret_states(config: Config, env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Each auth policy -> each variable its secret lists name -> ``unset``, ``empty``, or
    ``set, fp1:... (N bytes)``. Slow on purpose: one scrypt (about 60 ms) per variable set."""
    return {
        policy.name: {name: _state(env.get(name)) for name in policy.secret_variables}
        for policy in config.auth.values()
    }


def _state(value: str | None) -> str:
    if value is None:
        return "unset"
    return f"set, {describe(value)}" if value else "empty"
