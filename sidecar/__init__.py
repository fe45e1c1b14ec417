"""sidecar: a WebSocket-aware reverse proxy that makes edge agents' connections work,
and makes every refusal say exactly why."""

__version__ = "0.1.0"
