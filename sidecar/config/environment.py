"""The environment as the config sees it: the variables a routes file names (what
``sidecar serve --help`` lists), and whether the process runs on Railway.

Pure: the file's text and the environment are passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .interpolation import references
from .reader import compose

# Railway sets these in every deployment (docs.railway.com/reference/variables);
# RAILWAY_ENVIRONMENT_ID is the one checked first.
RAILWAY_MARKER = "RAILWAY_ENVIRONMENT_ID"
# RAILWAY_* variables that are set off Railway too: the railway CLI's credentials.
_NOT_ON_RAILWAY = frozenset({"RAILWAY_TOKEN", "RAILWAY_API_TOKEN"})


def railway_marker(env: Mapping[str, str]) -> str | None:
    """The variable that shows the process runs on Railway (``RAILWAY_ENVIRONMENT_ID``,
    else any other ``RAILWAY_*`` service variable that is set), or ``None``."""
    if env.get(RAILWAY_MARKER):
        return RAILWAY_MARKER
    return next((n for n in sorted(env) if n.startswith("RAILWAY_") and n not in _NOT_ON_RAILWAY and env[n]), None)


@dataclass(frozen=True)
class Reference:
    """A variable a routes file names: where (``listen.port``), the default written for
    it (``None``: none), and whether a bearer or jwt.secrets list names it (a secret)."""

    name: str
    where: str
    default: str | None
    secret: bool


def variables_of(text: str) -> list[Reference]:
    """Every ``${VAR}`` in the values of the routes file ``text``, in file order (comments
    and keys are not values). Raises ``reader.Unreadable`` if the text is not YAML."""
    found: list[Reference] = []
    seen: set[int] = set()
    todo: list[tuple[Node, str]] = [(compose(text, "routes.yaml"), "")]
    while todo:  # iterative, each collection once: aliases can make the tree a graph
        node, where = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            secret = where.endswith((".bearer", ".jwt.secrets"))
            found += [Reference(name, where, default, secret) for name, default in references(str(node.value))]
        elif isinstance(node, MappingNode):
            todo += reversed([(v, f"{where}.{k.value}".lstrip(".")) for k, v in node.value])
        elif isinstance(node, SequenceNode):
            todo += reversed([(item, where) for item in node.value])
    return found
