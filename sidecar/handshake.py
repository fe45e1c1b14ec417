"""RFC 6455 section 4.2.1 opening-handshake checks. Pure: no I/O, no aiohttp."""

from __future__ import annotations

import base64
import binascii

from multidict import MultiMapping

from .headers import tokens


def wants_websocket(headers: MultiMapping[str]) -> bool:
    """Does the request ask to upgrade to WebSocket? (It may still be malformed.) The one
    decision the listener (what follows the head) and the dispatcher (which route) share."""
    return "websocket" in tokens(headers, "Upgrade")


def handshake_problem(method: str, version: tuple[int, int], headers: MultiMapping[str]) -> str | None:
    """``None`` for a valid client handshake, else a short description of the fault."""
    if method != "GET":
        return f"method must be GET, not {method}"
    if version < (1, 1):
        return "HTTP/1.1 or later is required"
    upgrade = [t.strip().lower() for value in headers.getall("Upgrade", ()) for t in value.split(",") if t.strip()]
    if upgrade != ["websocket"]:
        # RFC 6455 section 4.2.1 asks only that the list include it, but a server
        # switches to one protocol, and aiohttp's own check (after the upstream
        # handshake) takes exactly 'websocket': refused here, before anything goes upstream.
        return "'Upgrade' must be exactly 'websocket'"
    if "upgrade" not in tokens(headers, "Connection"):
        return "'Connection' must include 'Upgrade'"
    versions = headers.getall("Sec-WebSocket-Version", ())
    if list(versions) != ["13"]:
        return "'Sec-WebSocket-Version' must be 13"
    keys = headers.getall("Sec-WebSocket-Key", ())
    if len(keys) != 1:
        return "exactly one 'Sec-WebSocket-Key' is required"
    try:
        if len(base64.b64decode(keys[0].strip(), validate=True)) != 16:
            return "'Sec-WebSocket-Key' must be 16 bytes, base64-encoded"
    except binascii.Error:
        return "'Sec-WebSocket-Key' is not valid base64"
    return None


def offered_protocols(headers: MultiMapping[str]) -> list[str]:
    """Subprotocols the client offered, in its order of preference."""
    return [t.strip() for value in headers.getall("Sec-WebSocket-Protocol", ()) for t in value.split(",") if t.strip()]


_DEFLATE_PARAMS = frozenset(
    {"server_no_context_takeover", "client_no_context_takeover", "server_max_window_bits", "client_max_window_bits"}
)


def deflate_answer_problem(offers: str, answer: str) -> str | None:
    """What makes an upstream's permessage-deflate ``answer`` one a client must fail (RFC 7692
    section 7.1) given the ``offers`` it was sent, or ``None``: a parameter unknown or
    repeated, or one the answer may only echo (``client_max_window_bits``) that no offer
    made, or a ``server_max_window_bits`` larger than every offer allowed. The words quote
    nothing the upstream sent."""
    if "," in answer:
        return "more than one permessage-deflate the client did not offer"
    params: dict[str, str] = {}
    for part in answer.split(";")[1:]:
        name, _, value = (piece.strip().lower() for piece in part.partition("="))
        if name not in _DEFLATE_PARAMS or name in params:
            return "a permessage-deflate parameter the client did not offer"
        params[name] = value.strip('"')
    fits = [offer for offer in _deflate_offers(offers) if _answer_fits(offer, params)]
    return None if fits else "permessage-deflate parameters the client did not offer"


def _deflate_offers(offers: str) -> list[dict[str, str]]:
    found = []
    for offer in offers.split(","):
        name, *parts = offer.split(";")
        if name.strip().lower() == "permessage-deflate":
            pairs = (part.partition("=") for part in parts)
            found.append({key.strip().lower(): value.strip().strip('"') for key, _, value in pairs})
    return found


def _answer_fits(offer: dict[str, str], answer: dict[str, str]) -> bool:
    if "client_max_window_bits" in answer and "client_max_window_bits" not in offer:
        return False
    limit = offer.get("server_max_window_bits")
    if limit and limit.isdigit():
        chosen = answer.get("server_max_window_bits", "15")
        return chosen.isdigit() and int(chosen) <= int(limit)
    return True
