"""A YAML syntax error as a ``Problem`` a person can act on: the line and column of the
mistake itself, in words.

Pure: no I/O. PyYAML reports where it gave up, which for an unclosed ``[``, ``{`` or quote
is the end of the file or the next key; the mistake is where it was opened, which PyYAML
keeps as the error's context. A mis-indented line is reported at that line. Token names
(``<block mapping start>``, ``'?'``) become words (a key).
"""

from __future__ import annotations

import re

import yaml

from .model import Problem

# Where PyYAML's marks count a new line (YAML 1.1 section 5.4, which includes NEL, LS and PS).
_YAML_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")


def syntax_problem(file: str, text: str, exc: yaml.YAMLError) -> Problem:
    """``exc``, raised composing ``text`` (from ``file``), as the one problem to report."""
    if isinstance(exc, yaml.reader.ReaderError):
        # A character YAML refuses (a control, a lone surrogate) is found before any mark
        # exists: the error has only an offset into the text, and its str() says
        # '"<unicode string>", position N'. Give the line instead, as for every other problem.
        at = len(_YAML_BREAK.split(text[: exc.position]))
        return Problem(file, at, f"YAML syntax: unacceptable character U+{exc.character:04X}: {exc.reason}")
    mark = getattr(exc, "problem_mark", None)
    problem = _plain_tokens(getattr(exc, "problem", None) or str(exc))
    if mark is None:
        return Problem(file, 0, f"YAML syntax: {problem}")
    found = f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    context, opened = getattr(exc, "context", None) or "", getattr(exc, "context_mark", None)
    if opened is not None and context.startswith(_UNCLOSED):
        # PyYAML notices an unclosed '[', '{' or quote where the text ends or something
        # else begins; the mistake is where it was opened.
        what = repr(_at(text, opened)) if context.startswith("while parsing") else "quoted value"
        return _at_mark(file, opened, f"YAML syntax: this {what} is never closed: {found}")
    if opened is not None and context.startswith("while parsing a block"):
        # A line indented deeper or shallower than its neighbours: PyYAML points at it.
        block = f"line {opened.line + 1}, column {opened.column + 1}"
        return _at_mark(file, mark, f"YAML syntax: indented unlike the block it is in, from {block}: {problem}")
    return _at_mark(file, mark, f"YAML syntax: {problem}{_HINTS.get(problem, '')}")


_UNCLOSED = ("while parsing a flow", "while scanning a quoted scalar")
_HINTS = {
    "mapping values are not allowed here": (
        " (a ': ' inside a value, which needs quotes; or a key indented deeper than the one above it)"
    ),
    "found character '\\t' that cannot start any token": " (YAML indents with spaces, never tabs)",
    "found character '@' that cannot start any token": " (quote a value that begins with @)",
    "found character '`' that cannot start any token": " (quote a value that begins with `)",
}


# PyYAML's names for tokens, as a reader of the file would say them.
_TOKENS = {
    "'<stream end>'": "the end of the file",
    "<stream end>": "the end of the file",
    "<block end>": "the end of the block",
    "'<block mapping start>'": "a key",
    "'?'": "a key",
    "'<block sequence start>'": "a list item",
    "'-'": "a list item",
    "unexpected end of stream": "the end of the file",
}


def _plain_tokens(problem: str) -> str:
    for token, words in _TOKENS.items():
        problem = problem.replace(token, words)
    return problem


def _at(text: str, mark: yaml.Mark) -> str:
    return text[mark.index] if 0 <= mark.index < len(text) else ""


def _at_mark(file: str, mark: yaml.Mark, message: str) -> Problem:
    return Problem(file, int(mark.line) + 1, message, column=int(mark.column) + 1)
