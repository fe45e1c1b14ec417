"""The config: ``routes.yaml`` -> frozen dataclasses, every problem with its ``file:line``.

What lives where:

- ``model``: the frozen dataclasses (``Config``, ``Route``, ``Upstream``, ``AuthPolicy``,
  ``AgentIdRule``, ``Retry``, ``StateConfig``, ``Problem``), their defaults, ``identity_headers`` and
  ``digest_secret``. Pure, no YAML.
- ``interpolation``: ``${VAR}``, ``${VAR:-default}`` and ``$$`` in values.
- ``reader``: text to YAML nodes (syntax problems with their line, the nesting-depth
  guard), and nodes to typed values (``Reader``, ``Fields``), each problem with its
  ``file:line``; whether a path is written canonically (``sidecar.paths``).
- ``redaction``: where the secrets are (every value under a ``bearer`` key), and keeping
  them out of every problem message.
- ``schema``: ``load_config``, and the top-level sections (listen, metrics, log, health,
  limits).
- ``state``: the ``state`` section (the fleet's shared state: a Redis URL, never quoted).
- ``targets``: the ``upstreams`` and ``auth`` sections; ``routes``: the ``routes`` section.
- ``files``: ``read_config``, the file on disk to ``load_config`` (the package's only I/O).

The names below are the ones the rest of ``sidecar`` and the tests use.
"""

from __future__ import annotations

from .files import read_config
from .model import (
    ALL_INTERFACES,
    DEFAULT_AGENT_ID_PATTERN,
    DEFAULT_MAX_MESSAGE_SIZE,
    AgentIdRule,
    AuthPolicy,
    Config,
    DuplicateAgent,
    IPNetwork,
    Problem,
    Retry,
    Route,
    Severity,
    StateConfig,
    Upstream,
    digest_secret,
    identity_headers,
)
from .schema import load_config

__all__ = [
    "ALL_INTERFACES",
    "DEFAULT_AGENT_ID_PATTERN",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "AgentIdRule",
    "AuthPolicy",
    "Config",
    "DuplicateAgent",
    "IPNetwork",
    "Problem",
    "Retry",
    "Route",
    "Severity",
    "StateConfig",
    "Upstream",
    "digest_secret",
    "identity_headers",
    "load_config",
    "read_config",
]
