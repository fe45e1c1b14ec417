"""Who the client is: the connection's peer, or the client a trusted proxy names.

Pure: no I/O, no aiohttp. The rules are built once per config (:meth:`ClientRules.of`)
and applied to plain values, once per request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from multidict import MultiMapping

from .config import Config, IPNetwork


@dataclass(frozen=True)
class ClientRules:
    """``trusted_proxies``: the proxies in front of the sidecar (Railway's edge) whose
    view of the client is kept; ``client_ip_header``: where such a proxy names the
    client (Railway's edge: ``X-Real-IP``)."""

    trusted_proxies: tuple[IPNetwork, ...] = ()
    client_ip_header: str | None = None

    @classmethod
    def of(cls, config: Config) -> ClientRules:
        return cls(config.trusted_proxies, config.client_ip_header)

    def trusted(self, address: str | None) -> bool:
        """Is ``address`` one of the trusted proxies?"""
        if not self.trusted_proxies or not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_proxies)

    def identify(self, peer: str | None, headers: MultiMapping[str]) -> tuple[str | None, bool]:
        """The client's address, for log lines and the failed-auth limit, and whether
        ``peer`` is a trusted proxy.

        From a trusted proxy the client is the address the proxy names in
        ``client_ip_header``, if set and an IP address; else the last X-Forwarded-For
        entry that is not itself a trusted proxy (entries further left were written by
        the client and prove nothing). From anyone else it is the connection's peer."""
        if not self.trusted(peer):
            return peer, False
        return self._named(peer, headers), True

    def _named(self, peer: str | None, headers: MultiMapping[str]) -> str | None:
        named: Sequence[str] = headers.getall(self.client_ip_header, ()) if self.client_ip_header else ()
        if len(named) == 1 and _is_ip(named[0].strip()):
            return named[0].strip()
        for entry in reversed(",".join(headers.getall("X-Forwarded-For", ())).split(",")):
            address = entry.strip()
            if address and not self.trusted(address):
                return address
        return peer


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def settings(config: Config) -> dict[str, tuple[str, str]]:
    """``listen.trusted_proxies`` and ``listen.client_ip_header`` as in force, each with
    why (set in the file, Railway's default, or the default): for ``sidecar check`` and
    the start-up log."""
    return {
        "trusted_proxies": (", ".join(map(str, config.trusted_proxies)) or "none", config.trusted_proxies_from),
        "client_ip_header": (config.client_ip_header or "none", config.client_ip_header_from),
    }


def log_fields(config: Config) -> dict[str, str]:
    """:func:`settings` as ``sidecar.started`` logs them: ``trusted_proxies``,
    ``trusted_proxies_from``, ``client_ip_header``, ``client_ip_header_from``."""
    fields: dict[str, str] = {}
    for key, (value, why) in settings(config).items():
        fields[key] = value
        fields[f"{key}_from"] = why
    return fields
