"""Reading ``routes.yaml``: text to a YAML node tree, and nodes to typed values with their line.

``compose`` turns the text into nodes, or raises ``Unreadable`` with the one ``Problem``
(a syntax error with its line, a file nested too deep for PyYAML's recursive composer,
an empty file). A ``Reader`` then converts nodes to strings, numbers, durations, sizes,
mappings and lists, expanding ``${VAR}`` in every scalar (``interpolation``), and
records a ``Problem`` with ``file:line`` for each value it cannot convert, instead of
stopping at the first; ``Fields`` reads a mapping's keys with a default for each. A
problem quotes a value with ``Reader.quote`` (or shows it with ``Reader.show``), which
masks a secret another variable carried into it (``redaction``). The sections are
built from these values in ``schema``, ``targets`` and ``routes``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Mapping
from typing import TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..paths import BadPath, canonicalize
from .interpolation import Expanded, expand
from .model import Problem, Severity
from .redaction import carried, net, shown
from .syntax import syntax_problem

T = TypeVar("T")
D = TypeVar("D")  # a default: the model's, for a key that is absent or has a problem

HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 section 5.6.2 token

_BOOL = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
# Units are case-insensitive; KB, MB and GB count in 1000s (and are a warning: see Reader.size).
_SIZES = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class Reader:
    """Walks the YAML node tree, converting and collecting problems."""

    def __init__(
        self,
        file: str,
        env: Mapping[str, str],
        strict: bool,
        secret_names: set[str],
        secrets: frozenset[str] = frozenset(),
    ) -> None:
        self.file = file
        self.env = env
        self.strict = strict
        self.problems: list[Problem] = []
        self._reported_unset: set[tuple[str, int]] = set()
        self.secret_names = secret_names  # variables some bearer or jwt.secrets list names
        self.secrets = secrets  # what those secrets look like (redaction.secret_values)
        # A value's node -> the secrets another variable carried into it (redaction.carried).
        self._carried: dict[int, frozenset[str]] = {}

    def error(self, node: Node | None, message: str) -> None:
        self._record(node, message, "error")

    def warn(self, node: Node | None, message: str) -> None:
        self._record(node, message, "warning")

    def _record(self, node: Node | None, message: str, severity: Severity) -> None:
        carries = self._carried.get(id(node)) if node is not None else None
        if carries:
            message = net(message, carries)
        self.problems.append(Problem(self.file, _line(node) if node else 0, message, severity))

    def show(self, node: Node, value: str) -> str:
        """``value``, read at ``node``, as a problem may show it (``<secret>`` if a
        variable carried a secret into it)."""
        return shown(value, self._carried.get(id(node), frozenset()))

    def quote(self, node: Node, value: str) -> str:
        """``value``, read at ``node``, quoted for a problem: ``repr`` of :meth:`show`."""
        return repr(self.show(node, value))

    # scalars

    def text(self, node: Node, where: str) -> Expanded | None:
        if not isinstance(node, ScalarNode):
            self.error(node, f"{where}: expected a single value, got a {_kind(node)}")
            return None
        try:
            expanded = expand(str(node.value), self.env)
        except ValueError as exc:
            self.error(node, f"{where}: {exc}")
            return None
        shared = sorted(set(expanded.used) & self.secret_names)
        if shared and not where.endswith((".bearer", ".jwt.secrets")):
            # A secret in any other field would sit in plain config (a header name, a host)
            # and in its repr; found by tests/test_fuzz_config.py ('header: ${EDGE_SECRET}').
            self.error(node, f"{where}: ${{{shared[0]}}} is a secret (a bearer list names it); use it nowhere else")
            return None
        carries = carried(expanded.used, self.env, self.secrets)
        if carries:
            self._carried[id(node)] = carries
        for name in expanded.unset:
            if (name, _line(node)) in self._reported_unset:
                continue
            self._reported_unset.add((name, _line(node)))
            message = f"{where}: environment variable {name} is referenced but not set"
            (self.error if self.strict else self.warn)(node, message)
        return expanded

    def string(self, node: Node, where: str) -> str | None:
        expanded = self.text(node, where)
        return None if expanded is None else expanded.value

    def convert(self, node: Node, where: str, what: str, parse: Callable[[str], T]) -> T | None:
        raw = self.string(node, where)
        if raw is None:
            return None
        try:
            return parse(raw.strip())
        except ValueError:
            self.error(node, f"{where}: expected {what}, got {self.quote(node, raw)}")
            return None

    def integer(self, node: Node, where: str, lo: int, hi: int) -> int | None:
        value = self.convert(node, where, "a whole number", int)
        if value is not None and not lo <= value <= hi:
            self.error(node, f"{where}: {self.show(node, str(value))} is out of range ({lo} to {hi})")
            return None
        return value

    def boolean(self, node: Node, where: str) -> bool | None:
        return self.convert(node, where, "true or false", _parse_bool)

    def duration(self, node: Node, where: str) -> float | None:
        value = self.convert(node, where, "a duration such as 10s, 500ms or 2m", _parse_duration)
        if value is not None and value <= 0:
            self.error(node, f"{where}: must be greater than zero")
            return None
        return value

    def duration_or_off(self, node: Node, where: str) -> float | None:
        """A duration, or ``off`` (also ``0``) to turn the feature off: 0.0."""
        return self.convert(node, where, "a duration such as 25s or 500ms, or off", _parse_duration_or_off)

    def size(self, node: Node, where: str) -> int | None:
        raw = self.string(node, where)
        if raw is None:
            return None
        try:
            value = _parse_size(raw.strip())
        except ValueError:
            self.error(node, f"{where}: expected a size such as 4MiB, 65536 or 512KiB, got {self.quote(node, raw)}")
            return None
        if value <= 0:
            self.error(node, f"{where}: must be greater than zero")
            return None
        decimal = _decimal_unit(raw)
        if decimal is not None:
            # 4MB is 4,000,000 bytes here, as in SI; whoever writes it almost always means 4MiB.
            number, unit = decimal
            binary = f"{number}{unit[0].upper()}iB"
            self.warn(
                node,
                f"{where}: {self.show(node, raw.strip())} is {value:,} bytes ({unit} counts in 1000s); if {binary} "
                f"({_parse_size(binary):,} bytes) is meant, write that",
            )
        return value

    # collections

    def mapping(self, node: Node, where: str, known: set[str]) -> dict[str, Node] | None:
        if not isinstance(node, MappingNode):
            self.error(node, f"{where}: expected a mapping (key: value), got a {_kind(node)}")
            return None
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, ScalarNode) else None
            if key is None:
                self.error(key_node, f"{where}: keys must be plain names")
                continue
            if key in out:
                self.error(key_node, f"{where}: duplicate key '{key}'")
                continue
            if known and key not in known:
                hint = nearest(key, known)
                hint = f": did you mean '{hint}'?" if hint else ""
                self.error(
                    key_node, f"{where}: unknown key '{key}'{hint} (expected one of: {', '.join(sorted(known))})"
                )
                continue
            out[key] = value_node
        return out

    def sequence(self, node: Node, where: str) -> list[Node] | None:
        if isinstance(node, ScalarNode):
            return [node]  # a single value stands for a list of one
        if not isinstance(node, SequenceNode):
            self.error(node, f"{where}: expected a list, got a {_kind(node)}")
            return None
        return list(node.value)


class Fields:
    """One mapping's values by key (``m``, as ``Reader.mapping`` returned it): a key that is
    absent, or whose value has a problem (reported, with its line), gives ``default``."""

    def __init__(self, reader: Reader, m: Mapping[str, Node], where: str) -> None:
        self.reader = reader
        self.m = m
        self.where = where

    def string(self, key: str, default: D) -> str | D:
        value = self.reader.string(self.m[key], f"{self.where}.{key}") if key in self.m else None
        return default if value is None else value

    def integer(self, key: str, lo: int, hi: int, default: D) -> int | D:
        value = self.reader.integer(self.m[key], f"{self.where}.{key}", lo, hi) if key in self.m else None
        return default if value is None else value

    def boolean(self, key: str, default: D) -> bool | D:
        value = self.reader.boolean(self.m[key], f"{self.where}.{key}") if key in self.m else None
        return default if value is None else value

    def duration(self, key: str, default: D) -> float | D:
        value = self.reader.duration(self.m[key], f"{self.where}.{key}") if key in self.m else None
        return default if value is None else value

    def duration_or_off(self, key: str, default: D) -> float | D:
        value = self.reader.duration_or_off(self.m[key], f"{self.where}.{key}") if key in self.m else None
        return default if value is None else value


def named_nodes(node: Node | None) -> dict[str, Node]:
    """A mapping's keys and their value nodes, for a problem's line (already validated)."""
    if not isinstance(node, MappingNode):
        return {}
    return {str(k.value): v for k, v in node.value if isinstance(k, ScalarNode)}


def nearest(key: str, known: Collection[str]) -> str | None:
    """The known key ``key`` is most likely a misspelling of: the same but for case, the
    closest by difflib's ratio, or the one key it begins (``drain`` for ``drain_timeout``)."""
    lowered = {k.lower(): k for k in known}
    if key.lower() in lowered:
        return lowered[key.lower()]
    close = difflib.get_close_matches(key.lower(), lowered, n=1)
    if close:
        return lowered[close[0]]
    begun = [k for k in known if len(key) >= 3 and k.lower().startswith(key.lower())]
    return begun[0] if len(begun) == 1 else None


def path_ok(rd: Reader, node: Node, where: str, path: str) -> bool:
    """Whether ``path`` is written in canonical form; if not, the problem is recorded."""
    try:
        canonical = canonicalize(path)
    except BadPath as exc:
        rd.error(node, f"{where}: {rd.quote(node, path)} is not a canonical path ({exc.why})")
        return False
    if canonical.wire != path or "%" in path:
        rd.error(node, f"{where}: write {rd.quote(node, path)} without percent-escapes")
        return False
    return True


def _parse_bool(text: str) -> bool:
    if text.lower() not in _BOOL:
        raise ValueError(text)
    return _BOOL[text.lower()]


def _kind(node: Node) -> str:
    return {MappingNode: "mapping", SequenceNode: "list", ScalarNode: "value"}.get(type(node), "node")


def _parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m)?", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _parse_duration_or_off(text: str) -> float:
    return 0.0 if text.lower() in ("off", "false", "no") else _parse_duration(text)


def _decimal_unit(text: str) -> tuple[int, str] | None:
    """The number and unit of a size written in KB, MB or GB (any case), else ``None``."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG][bB])\s*", text)
    return (int(m.group(1)), m.group(2)) if m else None


def _parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", text)
    if not m or m.group(2).lower() not in _SIZES:
        raise ValueError(text)
    return int(m.group(1)) * _SIZES[m.group(2).lower()]


# --- text to nodes -------------------------------------------------------------------


class Unreadable(Exception):
    """The text is not a YAML document this reader can walk; ``problem`` says why and where."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def compose(text: str, file: str) -> Node:
    """The node tree of ``text``. Raises :class:`Unreadable` on a syntax error, a file
    nested too deep, or an empty file."""
    too_deep = _too_deep(text)
    if too_deep is not None:
        raise Unreadable(Problem(file, too_deep, f"YAML syntax: nested more than {_MAX_DEPTH} levels deep"))
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise Unreadable(syntax_problem(file, text, exc)) from None
    if root is None:
        raise Unreadable(Problem(file, 0, "the file is empty"))
    return root


# routes.yaml nests 4 deep. PyYAML's composer recurses once per level, so a deep file
# ('a: [[[[...' 2000 deep, found writing tests/test_fuzz_config.py) raised RecursionError.
_MAX_DEPTH = 64


def _too_deep(text: str) -> int | None:
    """The line where collections nest more than ``_MAX_DEPTH`` deep, if they do. The
    parser's events come without recursion; stops at the first level too deep."""
    depth = 0
    try:
        for event in yaml.parse(text):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > _MAX_DEPTH:
                    return int(event.start_mark.line) + 1 if event.start_mark else 1
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return None  # yaml.compose reports it, with its line
    return None
