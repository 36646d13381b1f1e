"""Which address a request comes from when Parley runs behind proxies: `X-Forwarded-For` is
believed only when the connection itself comes from a configured trusted proxy, and then only
as far back as the hops are trusted proxies too (the rightmost untrusted address is the
client). With no trusted proxies configured, the header is ignored: anyone can send it.
"""

from __future__ import annotations

import ipaddress

from parley.settings import Network


class TrustedProxies:
    def __init__(self, networks: tuple[Network, ...] = ()) -> None:
        self.networks = networks

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def client_of(self, peer_ip: str, forwarded_for: str | None) -> str:
        """The client's address: `peer_ip`, or what trusted proxies say they were sent by."""
        if not self.networks or not forwarded_for or not self.trusts(peer_ip):
            return peer_ip
        for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
            if not self.trusts(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer_ip  # a hop that is no address: believe the socket
        return peer_ip
