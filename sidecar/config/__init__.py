"""The config: ``routes.yaml`` -> frozen dataclasses, every problem with its ``file:line``.

What lives where:

- ``model``: the frozen dataclasses (``Config``, ``Route``, ``Upstream``, ``AuthPolicy``,
  ``AgentIdRule``, ``Retry``, ``StateConfig``, ``Problem``), their defaults, ``identity_headers`` and
  ``digest_secret``. Pure, no YAML.
- ``interpolation``: ``${VAR}``, ``${VAR:-default}`` and ``$$`` in values.
- ``reader``: text to YAML nodes (the nesting-depth guard), and nodes to typed values
  (``Reader``, ``Fields``), each problem with its ``file:line``; the known key an unknown
  one is nearest to; whether a path is written canonically (``sidecar.paths``).
- ``syntax``: a YAML syntax error as a problem at the line and column of the mistake.
- ``railway``: running on Railway (its variables set): its edge's defaults for
  ``trusted_proxies`` and ``client_ip_header``, and the drain it allows.
- ``redaction``: where the secrets are (every value under a ``bearer`` key), and keeping
  them out of every problem message (by where a quoted value came from, never by searching
  messages for the secret).
- ``schema``: ``load_config``, and the top-level sections (listen, metrics, log, health,
  limits).
- ``state``: the ``state`` section (the fleet's shared state: a Redis URL, never quoted).
- ``targets``: the ``upstreams`` and ``auth`` sections; ``routes``: the ``routes`` section.
- ``files``: ``read_config``, the file on disk to ``load_config`` (the package's only I/O).
- ``environment``: the variables a file names (for ``serve --help``), and whether the
  process runs on Railway.

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
