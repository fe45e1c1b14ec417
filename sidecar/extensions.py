"""Is every HTTP parser the process runs compiled?

The public listener parses with llhttp through httptools, which has no pure-Python
fallback: checked all the same (its parser must be the extension module). aiohttp ships C
(llhttp, Cython) and pure-Python versions of its HTTP parsers and WebSocket reader, and
silently uses the Python ones when ``AIOHTTP_NO_EXTENSIONS`` is set or the C ones did not
build (a source install, an unusual platform); aiohttp still serves the metrics listener
and is the client of ``sidecar probe``. The pure-Python HTTP parser has had
request-smuggling advisories of its own and both are far slower, so ``serve`` refuses to
start on them unless told otherwise. Each class is looked up where the code that runs it
takes it from, so what is checked is what runs.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from importlib.machinery import EXTENSION_SUFFIXES

ALLOW_ENV = "SIDECAR_ALLOW_PURE_PYTHON"
_COMPILED = frozenset({"aiohttp._http_parser", "aiohttp._websocket.reader_c", "aiohttp._websocket.mask"})


def pure_python_parts() -> list[str]:
    """The parts of aiohttp this process runs in pure Python (empty: all in C)."""
    from aiohttp import client, client_proto, web_protocol, web_ws
    from aiohttp._websocket import helpers

    used = {
        "HTTP request parser": getattr(web_protocol, "HttpRequestParser", None),
        "HTTP response parser": getattr(client_proto, "HttpResponseParser", None),
        "WebSocket reader": getattr(web_ws, "WebSocketReader", None),
        "WebSocket client reader": getattr(client, "WebSocketReader", None),
        "WebSocket mask": getattr(helpers, "websocket_mask", None),
    }
    parts = [name for name, thing in used.items() if getattr(thing, "__module__", None) not in _COMPILED]
    import httptools

    module = sys.modules.get(getattr(httptools.HttpRequestParser, "__module__", ""), None)
    if not str(getattr(module, "__file__", "")).endswith(tuple(EXTENSION_SUFFIXES)):
        parts.append("the listener's HTTP parser (httptools)")
    return parts


def allowed_by_env(environ: Mapping[str, str]) -> bool:
    return environ.get(ALLOW_ENV, "").strip().lower() in {"1", "true", "yes"}


def refusal(parts: list[str]) -> str:
    """The one line ``serve`` prints when it will not start."""
    return (
        f"not starting: aiohttp is running without its C extensions ({', '.join(parts)} in pure Python), "
        "and its pure-Python HTTP parser has had security advisories; unset AIOHTTP_NO_EXTENSIONS and "
        "install aiohttp's binary wheel (pip install --force-reinstall --only-binary=aiohttp aiohttp), "
        f"or pass --allow-pure-python (or set {ALLOW_ENV}=1) to run anyway"
    )
