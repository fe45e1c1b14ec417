"""``${VAR}``, ``${VAR:-default}`` and ``$$`` in config values. Pure: the environment is passed in.

Expansion happens on scalar values after YAML parsing (never on keys, never on the
text), so an environment value can never change the file's structure. ``$$`` is a
literal ``$``; any other ``${`` is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\})")


@dataclass(frozen=True)
class Expanded:
    value: str
    unset: tuple[str, ...]  # referenced without a default, and not set
    used: tuple[str, ...]  # every variable referenced
    defaulted: bool = False  # some of the value is a default written in the file


def expand(text: str, env: Mapping[str, str]) -> Expanded:
    """``text`` with its variables replaced. Raises ``ValueError`` on a malformed ``${``."""
    unset: list[str] = []
    used: list[str] = []
    defaulted = False

    def one(m: re.Match[str]) -> str:
        nonlocal defaulted
        name = m.group(1)
        if name is None:
            return "$"
        used.append(name)
        value = env.get(name)
        if m.group(2) is not None:
            defaulted = defaulted or (not value and bool(m.group(3)))
            return value if value else m.group(3)
        if value is None:
            unset.append(name)
            return ""
        return value

    value = _VAR.sub(one, text)
    if "${" in _VAR.sub("", text):
        raise ValueError("malformed '${...}' (use ${NAME} or ${NAME:-default}; $$ for '$')")
    return Expanded(value, tuple(unset), tuple(used), defaulted)


def variables(text: str) -> list[str]:
    """The variables ``text`` names, in order (unexpanded; malformed ones left out)."""
    return [m.group(1) for m in _VAR.finditer(text) if m.group(1)]


def references(text: str) -> list[tuple[str, str | None]]:
    """Each variable ``text`` names, with the default written for it (``None``: none)."""
    return [(m.group(1), m.group(3) if m.group(2) is not None else None) for m in _VAR.finditer(text) if m.group(1)]
