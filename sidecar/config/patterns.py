"""What an operator's agent id ``pattern`` can cost: the longest id it can match, and
whether it nests quantifiers (catastrophic backtracking).

The pattern runs on attacker input (a header may hold 8 KiB), so input longer than the
pattern's own maximum is refused before the pattern runs (``AgentIdRule.max_length``),
and ``sidecar check`` warns about a pattern such as ``(a+)+`` whose backtracking grows
exponentially with the input. Both are read from the parse tree of Python's own regular
expression parser (``re._parser``, the module ``re.compile`` uses; it has no stubs,
hence ``Any``). Pure: no I/O.
"""

from __future__ import annotations

import importlib
from typing import Any

from .model import UNBOUNDED_AGENT_ID_LENGTH

_PARSER: Any = importlib.import_module("re._parser")
# Longest input ever worth matching: the request head's own line limit.
_LINE_LIMIT = 8190
_REPEATS = frozenset({"MAX_REPEAT", "MIN_REPEAT"})  # POSSESSIVE_REPEAT never backtracks


def max_length(source: str) -> tuple[int, bool]:
    """The longest string ``source`` can match, and whether that is the pattern's own
    bound (False: the pattern is unbounded, ``.+``, and the default bound applies)."""
    _, high = _PARSER.parse(source).getwidth()
    if high >= _PARSER.MAXREPEAT:
        return UNBOUNDED_AGENT_ID_LENGTH, False
    return min(int(high), _LINE_LIMIT), True


def nested_quantifier(source: str) -> bool:
    """Whether a repeated part of ``source`` itself contains a repeat (``(a+)+``,
    ``(\\w+\\s?)*``, ``(a{1,3})+``): the shape that backtracks exponentially on input
    that almost matches. Atomic groups and possessive repeats are left out: they never
    backtrack into what they matched."""
    return _nested(_PARSER.parse(source), inside_repeat=False)


def _nested(items: Any, *, inside_repeat: bool) -> bool:
    for op, arg in items:
        name = str(op)
        if name in _REPEATS:
            _, high, body = arg
            if high > 1 and inside_repeat:
                return True
            if _nested(body, inside_repeat=inside_repeat or high > 1):
                return True
        elif any(_nested(part, inside_repeat=inside_repeat) for part in _parts(name, arg)):
            return True
    return False


def _parts(name: str, arg: Any) -> list[Any]:
    """The sub-patterns of a group, an alternation, a lookaround or a conditional."""
    if name == "SUBPATTERN":
        return [arg[3]]
    if name == "BRANCH":
        return list(arg[1])
    if name in ("ASSERT", "ASSERT_NOT"):
        return [arg[1]]
    if name == "GROUPREF_EXISTS":
        return [part for part in arg[1:] if part is not None]
    return []
