"""`MemoryChannelCounts`: the counts of one process, which is the whole deployment: this node's
own numbers (`LocalCounts`, the hubs), read when asked.

It keeps nothing and is told nothing (`tracks` is False): with it the node builds no event
for it and writes nothing on a subscribe, and every answer is as fresh as the hubs.
"""

from __future__ import annotations

from parley.backends.counts import ChannelCounts


class MemoryChannelCounts(ChannelCounts):
    async def subscriptions(self, app_id: str, channel: str) -> int:
        return self.local.subscriptions(app_id, channel)

    async def occupied_channels(self, app_id: str, prefix: str = "") -> dict[str, int]:
        return self.local.occupied_channels(app_id, prefix)

    async def connections(self, app_id: str) -> int:
        return self.local.connections(app_id)
