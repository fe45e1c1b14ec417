"""Secrets in a config file: where they are, and keeping them out of every problem message.

A secret is every value under a ``bearer`` key, anywhere in the file, valid or not:
the literal text, its expansion, and the value of each variable it names. A problem
message quotes the value it refuses, and a variable that holds a secret can be
referenced anywhere (``type: ${EDGE_SECRET}``), so every message is redacted, whatever
the field. Pure: the environment is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .interpolation import expand, variables
from .model import Problem

REDACTED = "<secret>"


def bearer_texts(root: Node) -> list[str]:
    """Every value under a ``bearer`` key anywhere in the file, valid or not, unexpanded: a
    duplicate or broken policy's secrets are secrets too (found by tests/test_fuzz_config.py:
    with 'edge:' written twice, the loader skipped the duplicate and never read its list)."""
    texts: list[str] = []
    seen: set[int] = set()
    todo = [root]
    while todo:  # iterative, and each node once: aliases can make the tree a graph
        node = todo.pop()
        if id(node) in seen or isinstance(node, ScalarNode):
            continue
        seen.add(id(node))
        pairs = node.value if isinstance(node, MappingNode) else [(None, item) for item in node.value]
        for key, value in pairs:
            todo.append(value)
            if isinstance(key, ScalarNode) and key.value == "bearer":
                items = value.value if isinstance(value, SequenceNode) else [value]
                texts += [str(item.value) for item in items if isinstance(item, ScalarNode)]
    return texts


def secret_names(texts: list[str]) -> set[str]:
    """The variables the bearer values name: secrets, to be used nowhere else."""
    return {name for text in texts for name in variables(text)}


def secret_values(texts: list[str], env: Mapping[str, str]) -> set[str]:
    """What a secret looks like in a message: the value, and each variable's value in it."""
    values: set[str] = set()
    for text in texts:
        names = variables(text)
        try:
            expanded = expand(text, env).value
        except ValueError:
            expanded = ""
        values.update(filter(None, (text if not names else "", expanded, *(env.get(name) for name in names))))
    return values


def redact(problems: list[Problem], secrets: set[str]) -> list[Problem]:
    """``problems`` with every form of every secret in their messages replaced."""
    out: list[Problem] = []
    for problem in problems:
        message = problem.message
        for secret in sorted(secrets, key=len, reverse=True):
            for form in (secret, repr(secret)[1:-1]):  # as written, and as quoted by !r
                message = message.replace(form, REDACTED)
        out.append(replace(problem, message=message))
    return out
