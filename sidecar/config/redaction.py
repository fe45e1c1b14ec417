"""Secrets in a config file: where they are, and keeping them out of problem messages.

A secret is every value under a ``bearer`` or a ``secrets`` key (a policy's ``jwt.secrets``,
the HMAC keys of its tokens), anywhere in the file, valid or not:
the literal text, its expansion, and the value of each variable it names. Pure: the
environment is passed in.

How a secret is kept out of a problem, in order:

1. A problem about a secret field never quotes its value (``targets``).
2. A variable a bearer list names is refused in any other field, without quoting it
   (``Reader.text``).
3. What is left is another variable that holds a secret's value (a copy, or a shared
   variable referenced twice) and is expanded into a field whose problem quotes it.
   The reader notes which secrets each such value *carries* (:func:`carried`), and a
   quoted value that carries one is shown as ``'<secret>'`` (:func:`shown`), in the
   problems about that one value only.

Masking goes by where a value came from, never by searching every message for the
secret: a one-letter secret would garble every message (``e<secret>pected``), and a
secret equal to a word of a message (``info``) would be revealed by where the mask
lands. Every problem that does not quote a secret reads exactly as it would with a
long random secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .interpolation import expand, variables

REDACTED = "<secret>"
SECRET_KEYS = frozenset({"bearer", "secrets"})  # the keys whose values are secrets
# A secret this long found inside another variable's value is taken to be a copy of it,
# not a coincidence; a shorter one counts only as the variable's whole value. (Shorter
# secrets are a warning of their own: ``targets``.)
LONG_SECRET = 16


def bearer_texts(root: Node) -> list[str]:
    """Every value under a ``bearer`` or ``secrets`` key anywhere in the file, valid or not, unexpanded: a
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
            if isinstance(key, ScalarNode) and key.value in SECRET_KEYS:
                items = value.value if isinstance(value, SequenceNode) else [value]
                texts += [str(item.value) for item in items if isinstance(item, ScalarNode)]
    return texts


def secret_names(texts: list[str]) -> set[str]:
    """The variables the secret values name: secrets, to be used nowhere else."""
    return {name for text in texts for name in variables(text)}


def secret_values(texts: list[str], env: Mapping[str, str]) -> frozenset[str]:
    """What a secret looks like: each bearer value, as written and expanded, and each
    variable's value in it."""
    values: set[str] = set()
    for text in texts:
        names = variables(text)
        try:
            expanded = expand(text, env).value
        except ValueError:
            expanded = ""
        values.update(filter(None, (text if not names else "", expanded, *(env.get(name) for name in names))))
    return frozenset(values)


def carried(used: Iterable[str], env: Mapping[str, str], secrets: frozenset[str]) -> frozenset[str]:
    """The secrets that the variables ``used`` (in a field that is not a secret field)
    bring into its value: a variable's whole value that is a secret, or a long secret
    inside it."""
    found: set[str] = set()
    for name in used:
        value = env.get(name)
        if value:
            found.update(s for s in secrets if s == value or (len(s) >= LONG_SECRET and s in value))
    return frozenset(found)


def shown(value: str, secrets: frozenset[str]) -> str:
    """``value`` as a problem may show it: :data:`REDACTED` if it holds one of ``secrets``
    (those its own field carries)."""
    return REDACTED if any(s in value for s in secrets) else value


def net(message: str, secrets: frozenset[str]) -> str:
    """A last net for a problem about a value that carries ``secrets``, for a message
    that quoted the value without :func:`shown`: a quoted secret (``'...'``, as ``!r``
    quotes it) is masked, and a long one wherever it is."""
    for secret in sorted(secrets, key=len, reverse=True):
        for quoted in {repr(secret), f"'{secret}'"}:
            message = message.replace(quoted, repr(REDACTED))
        if len(secret) >= LONG_SECRET:
            message = message.replace(secret, REDACTED).replace(repr(secret)[1:-1], REDACTED)
    return message
