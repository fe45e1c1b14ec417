"""The config: ``routes.yaml`` -> frozen dataclasses, every problem with its ``file:line``.

What lives where:

- ``model``: the frozen dataclasses (``Config``, ``Route``, ``Upstream``, ``AuthPolicy``,
  ``AgentIdRule``, ``Retry``, ``Problem``) and their defaults. Pure, no YAML.
- ``interpolation``: ``${VAR}``, ``${VAR:-default}`` and ``$$`` in values.
- ``reader``: text to YAML nodes (syntax problems, the nesting-depth guard), and nodes
  to typed values, each problem with its ``file:line``.
- ``redaction``: where the secrets are (every value under ``bearer``), and keeping them
  out of problem messages.
- ``schema``: ``load_config`` and the section builders.

The names below are the ones the rest of ``sidecar`` and the tests use.
"""

from __future__ import annotations

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
    "Upstream",
    "digest_secret",
    "identity_headers",
    "load_config",
]
